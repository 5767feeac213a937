using XRay.Model;
using System.ComponentModel.DataAnnotations;

namespace XRay.Server.Model;

/// <summary>Which model to serve and how. Configuration section <c>Model</c>.</summary>
public sealed class ModelOptions
{
    public const string SectionName = "Model";

    /// <summary>
    /// Checkpoint folder (manifest.json + weights). Empty (the default) serves the built-in default model.
    /// Command line: <c>--model PATH</c>.
    /// </summary>
    public string? Path { get; set; }

    public const string Torch = InferenceRuntimes.Torch;
    public const string OnnxRuntime = InferenceRuntimes.OnnxRuntime;

    /// <summary>
    /// Execution runtime: <c>torch</c> (TorchSharp/libtorch; fp32 and bf16, CUDA where its CUDA package is installed),
    /// <c>onnxruntime</c> (ONNX Runtime on the checkpoint exported to ONNX at load time; fp32; CUDA in the
    /// <c>-p:OnnxRuntimeGpu=true</c> build) or <c>auto</c> (default: onnxruntime for fp32, torch for bf16: ONNX Runtime
    /// measured about twice TorchSharp's fp32 throughput on CPU). Command line: <c>--runtime</c>.
    /// </summary>
    [RegularExpression("^(auto|torch|onnxruntime)$", ErrorMessage = "Model:Runtime must be auto, torch or onnxruntime.")]
    public string Runtime { get; set; } = "auto";

    /// <summary><c>auto</c> (default: cuda when available, else cpu), <c>cpu</c> or <c>cuda</c>. Command line: <c>--device</c>.</summary>
    [RegularExpression("^(auto|cpu|cuda)$", ErrorMessage = "Model:Device must be auto, cpu or cuda.")]
    public string Device { get; set; } = "auto";

    /// <summary><c>fp32</c> (default) or <c>bf16</c>. Command line: <c>--precision</c>.</summary>
    [RegularExpression("^(fp32|bf16)$", ErrorMessage = "Model:Precision must be fp32 or bf16.")]
    public string Precision { get; set; } = "fp32";

    /// <summary><see cref="Warmup"/> value: every size, each timed, and the batcher told which sizes to prefer.</summary>
    public const string WarmupMeasure = "measure";

    /// <summary>
    /// Batch sizes run once at start-up, before the server reports SERVING: <c>powers-of-two</c> (default:
    /// 1, 2, 4, ... up to and including Batching:MaxBatchSize), <c>all</c> (every size 1..MaxBatchSize), <c>measure</c>
    /// (every size, then each timed twice more; sizes that run slower per image than a smaller size are avoided by the
    /// batcher; three forwards of every size: ~20 s for the default model on 2 cores) or <c>none</c>.
    /// </summary>
    [RegularExpression("^(powers-of-two|all|measure|none)$", ErrorMessage = "Model:Warmup must be powers-of-two, all, measure or none.")]
    public string Warmup { get; set; } = "powers-of-two";

    /// <summary><see cref="Torch"/> or <see cref="OnnxRuntime"/>: <see cref="Runtime"/> with <c>auto</c> resolved.</summary>
    /// <exception cref="ArgumentException">bf16 asked of ONNX Runtime.</exception>
    public string ResolveRuntime() => InferenceRuntimes.Resolve(Runtime, Precision);

    /// <summary>Why <see cref="Runtime"/> and <see cref="Precision"/> cannot go together; null when they can.</summary>
    public string? RuntimeError() => InferenceRuntimes.Incompatibility(Runtime, Precision) is { } error ? $"Model: {error}" : null;

    /// <summary>These settings with another checkpoint (a model swap keeps device, precision and warm-up).</summary>
    public ModelOptions WithPath(string? path)
    {
        var copy = (ModelOptions)MemberwiseClone();
        copy.Path = path;
        return copy;
    }

    public IReadOnlyList<int> WarmupBatchSizes(int maxBatchSize) => Warmup switch
    {
        "none" => [],
        "all" or WarmupMeasure => Enumerable.Range(1, maxBatchSize).ToArray(),
        _ => PowersOfTwoUpTo(maxBatchSize),
    };

    private static int[] PowersOfTwoUpTo(int max)
    {
        var sizes = new List<int>();
        for (int size = 1; size < max; size *= 2) sizes.Add(size);
        sizes.Add(max);
        return sizes.ToArray();
    }
}
