namespace XRay.Model;

/// <summary>How a <see cref="ModelRunner"/> (TorchSharp) or <see cref="Onnx.OnnxRuntimeRunner"/> executes the network.</summary>
public sealed record RunnerOptions
{
    /// <summary><c>auto</c> (default: <c>cuda</c> when torch.cuda.is_available(), else <c>cpu</c>), <c>cpu</c> or <c>cuda</c>.</summary>
    public string Device { get; init; } = "auto";

    /// <summary><c>fp32</c> (default) or <c>bf16</c> (weights and activations; about twice as fast on CPUs with AVX-512 BF16).</summary>
    public string Precision { get; init; } = "fp32";

    /// <summary>
    /// Inference threads, each running whole batches; default 1. Each forward also uses torch's intra-op thread pool
    /// (process-wide, <c>torch.set_num_threads</c>), so with several workers the host should lower that to about
    /// cores / Workers to avoid oversubscribing the CPU.
    /// </summary>
    public int Workers { get; init; } = 1;

    /// <summary>
    /// ONNX Runtime only: intra-op threads of each worker's session; 0 (default) = cores / <see cref="Workers"/>, so that
    /// the workers together use every core once. Inter-op threads are always 1 (sequential execution).
    /// </summary>
    public int IntraOpThreads { get; init; }

    /// <summary>ONNX Runtime only: plan each input shape's memory once and reuse it (default true).</summary>
    public bool MemoryPattern { get; init; } = true;

    /// <summary>ONNX Runtime only: keep freed CPU memory in ONNX Runtime's arena for the next batch (default true).</summary>
    public bool CpuMemoryArena { get; init; } = true;

    /// <summary>
    /// ONNX Runtime only: let idle intra-op threads spin waiting for work (ONNX Runtime's default) rather than sleep.
    /// Spinning saves a few microseconds per operator on a dedicated machine and costs whole time slices on a busy one;
    /// default false.
    /// </summary>
    public bool AllowSpinning { get; init; }
}
