namespace XRay.Model;

/// <summary>
/// Runs a model's network on batches of preprocessed images: <see cref="ModelRunner"/> (TorchSharp) or
/// <see cref="Onnx.OnnxRuntimeRunner"/> (ONNX Runtime). Thread-safe; outputs are raw logits (the sigmoid is the caller's).
/// </summary>
public interface IInferenceRunner : IDisposable
{
    ModelManifest Manifest { get; }

    /// <summary><c>torch</c> or <c>onnxruntime</c>.</summary>
    string Runtime { get; }

    /// <summary><c>cpu</c> or <c>cuda</c>.</summary>
    string Device { get; }

    /// <summary><c>fp32</c> or <c>bf16</c>.</summary>
    string Precision { get; }

    /// <summary>Floats per image: <c>Channels * CropSize * CropSize</c> (<see cref="PreprocessingSpec.OutputLength"/>).</summary>
    int InputLength { get; }

    int NumClasses { get; }

    /// <summary>
    /// Runs one batch: <paramref name="input"/> holds at least <c>batchSize * InputLength</c> floats (NCHW, normalised),
    /// the first <c>batchSize * NumClasses</c> floats of <paramref name="logits"/> receive the raw logits, row per image.
    /// Neither may be touched until the task completes. The runtime reads the input where it lies when it can (ONNX
    /// Runtime); it is not copied to the managed heap. Cancellation takes effect while queued, not during the forward.
    /// </summary>
    Task RunAsync(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits, CancellationToken cancellationToken = default);

    /// <summary>One forward per distinct batch size on every worker: the first forward of each input shape is slow.</summary>
    Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken = default);
}

public static class InferenceRunnerExtensions
{
    /// <summary>
    /// Runs one batch of <c>batchSize * InputLength</c> floats; returns <c>batchSize * NumClasses</c> logits. Bad arguments
    /// and a disposed runner throw here, not in the task.
    /// </summary>
    public static Task<float[]> RunAsync(this IInferenceRunner runner, float[] input, int batchSize, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(runner);
        ArgumentNullException.ThrowIfNull(input);
        var logits = new float[Math.Max(0, batchSize) * runner.NumClasses];
        var run = runner.RunAsync(input, batchSize, logits, cancellationToken);
        return Completed(run, logits);

        static async Task<float[]> Completed(Task run, float[] logits)
        {
            await run.ConfigureAwait(false);
            return logits;
        }
    }

    /// <summary>Checks the arguments every runner's <see cref="IInferenceRunner.RunAsync(ReadOnlyMemory{float}, int, Memory{float}, CancellationToken)"/> takes.</summary>
    internal static void CheckBatch(IInferenceRunner runner, ReadOnlyMemory<float> input, int batchSize, Memory<float> logits)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (input.Length < (long)batchSize * runner.InputLength)
        {
            throw new ArgumentException(
                $"Input holds {input.Length} floats; a batch of {batchSize} needs {batchSize} x {runner.InputLength} = {(long)batchSize * runner.InputLength}.",
                nameof(input));
        }

        if (logits.Length < batchSize * runner.NumClasses)
        {
            throw new ArgumentException(
                $"Logits hold {logits.Length} floats; a batch of {batchSize} needs {batchSize} x {runner.NumClasses}.", nameof(logits));
        }
    }
}
