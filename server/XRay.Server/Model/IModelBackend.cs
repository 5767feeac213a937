using XRay.Model;

namespace XRay.Server.Model;

/// <summary>
/// The network the server runs batches on: <see cref="RunnerModelBackend"/> over TorchSharp or ONNX Runtime;
/// tests substitute a fake to control timing and failures.
/// </summary>
public interface IModelBackend : IDisposable
{
    ModelManifest Manifest { get; }

    /// <summary><c>torch</c> or <c>onnxruntime</c>.</summary>
    string Runtime { get; }

    /// <summary><c>cpu</c> or <c>cuda</c>.</summary>
    string Device { get; }

    /// <summary><c>fp32</c> or <c>bf16</c>.</summary>
    string Precision { get; }

    /// <summary>
    /// Runs <paramref name="batchSize"/> normalised CHW images, the first <c>batchSize * InputLength</c> floats of
    /// <paramref name="input"/>, and writes <c>batchSize * classes</c> logits into <paramref name="logits"/>. Neither buffer
    /// may be touched until the task completes.
    /// </summary>
    Task RunAsync(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits, CancellationToken cancellationToken);

    /// <summary>One forward per batch size: the first forward of each input shape is slow.</summary>
    Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken);
}

/// <summary>Loads the configured model. Called once, off the request path, at start-up.</summary>
public interface IModelBackendFactory
{
    IModelBackend Create(ModelOptions options, int modelInstances);
}
