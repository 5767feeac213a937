using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace XRay.Model;

/// <summary>
/// Runs a network with TorchSharp on dedicated inference threads (<see cref="InferenceThreads"/>). Each thread enables
/// inference mode on itself (grad mode is per thread in libtorch) and runs every batch inside a dispose scope, so no
/// tensor outlives its batch. Thread-safe.
/// </summary>
/// <remarks>
/// The runner moves the model's network to the device and precision asked for, in place, and puts it in eval
/// mode; it does not dispose the model. The sigmoid is left to the caller: outputs are raw logits.
/// </remarks>
public sealed class ModelRunner : IInferenceRunner
{
    /// <summary>Upper bound for <see cref="RunnerOptions.Workers"/>.</summary>
    public const int MaxWorkers = 64;

    private readonly nn.Module<Tensor, Tensor> _network;
    private readonly Device _device;
    private readonly ScalarType _dtype;
    private readonly int _cropSize;
    private readonly int _channels;
    private readonly InferenceThreads _threads;

    /// <exception cref="ArgumentException">Unknown device or precision, cuda asked for but unavailable, or Workers out of [1, 64].</exception>
    public ModelRunner(LoadedModel model, RunnerOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);

        Device = (options.Device ?? "").Trim().ToLowerInvariant() switch
        {
            "auto" => cuda.is_available() ? "cuda" : "cpu",
            "cpu" => "cpu",
            "cuda" when cuda.is_available() => "cuda",
            "cuda" => throw new ArgumentException(
                "Device 'cuda' was requested but CUDA is not available (torch.cuda.is_available() is false: CPU-only libtorch or no GPU).",
                nameof(options)),
            _ => throw new ArgumentException(
                $"Unknown device '{options.Device}'; expected 'auto', 'cpu' or 'cuda'.", nameof(options)),
        };
        (Precision, _dtype) = (options.Precision ?? "").Trim().ToLowerInvariant() switch
        {
            "fp32" => ("fp32", ScalarType.Float32),
            "bf16" => ("bf16", ScalarType.BFloat16),
            _ => throw new ArgumentException(
                $"Unknown precision '{options.Precision}'; expected 'fp32' or 'bf16'.", nameof(options)),
        };
        if (options.Workers is < 1 or > MaxWorkers)
        {
            throw new ArgumentException(
                $"Workers must be in [1, {MaxWorkers}]; got {options.Workers}.", nameof(options));
        }

        Manifest = model.Manifest;
        var crop = Manifest.Preprocessing.CropSize;
        _channels = Manifest.Preprocessing.Channels;
        InputLength = _channels * crop * crop;
        NumClasses = Manifest.ClassNames.Count;
        _cropSize = crop;
        _device = Device == "cuda" ? CUDA : CPU;
        _network = model.Network;
        _network.to(_device);
        if (_dtype != ScalarType.Float32)
        {
            _network.to(_dtype);
        }

        _network.eval();
        // Thread-local: every forward on an inference thread records no autograd graph and skips version counting.
        _threads = new InferenceThreads(options.Workers, () => inference_mode(), Forward);
    }

    public ModelManifest Manifest { get; }

    /// <summary><c>torch</c>.</summary>
    public string Runtime => "torch";

    /// <summary><c>cpu</c> or <c>cuda</c>.</summary>
    public string Device { get; }

    /// <summary><c>fp32</c> or <c>bf16</c>.</summary>
    public string Precision { get; }

    /// <summary>Floats per image: <c>Channels * CropSize * CropSize</c> (<see cref="PreprocessingSpec.Channels"/>).</summary>
    public int InputLength { get; }

    public int NumClasses { get; }

    public Task RunAsync(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits, CancellationToken cancellationToken = default) =>
        _threads.RunAsync(this, input, batchSize, logits, cancellationToken);

    public Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken = default) =>
        _threads.WarmUpAsync(batchSizes, InputLength, NumClasses, cancellationToken);

    /// <summary>Fails queued requests with <see cref="ObjectDisposedException"/>, lets running ones finish and joins the workers.</summary>
    public void Dispose() => _threads.Dispose();

    private void Forward(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits)
    {
        using var scope = NewDisposeScope();
        // One copy, straight into libtorch's memory: no managed array on the way.
        var x = empty(new long[] { batchSize, _channels, _cropSize, _cropSize }, dtype: ScalarType.Float32);
        MemoryMarshal.AsBytes(input.Span[..(batchSize * InputLength)]).CopyTo(x.bytes);
        if (_dtype != ScalarType.Float32 || _device.type != DeviceType.CPU)
        {
            x = x.to(_dtype, _device);
        }

        var output = _network.call(x);
        if (output.ndim != 2 || output.shape[0] != batchSize || output.shape[1] != NumClasses)
        {
            throw new InvalidOperationException(
                $"The network returned shape [{string.Join(", ", output.shape)}]; expected [{batchSize}, {NumClasses}] for '{Manifest.Name}'.");
        }

        output = output.to(ScalarType.Float32, CPU).contiguous();
        MemoryMarshal.Cast<byte, float>(output.bytes).CopyTo(logits.Span);
    }
}
