using XRay.Model;

namespace XRay.Server.Model;

/// <summary>
/// The network the server runs batches on. The TorchSharp implementation is <see cref="TorchModelBackend"/>;
/// tests substitute a fake to control timing and failures.
/// </summary>
public interface IModelBackend : IDisposable
{
    ModelManifest Manifest { get; }

    /// <summary><c>cpu</c> or <c>cuda</c>.</summary>
    string Device { get; }

    /// <summary><c>fp32</c> or <c>bf16</c>.</summary>
    string Precision { get; }

    /// <summary>Runs <paramref name="batchSize"/> normalised CHW images (concatenated); returns batchSize x classes logits.</summary>
    Task<float[]> RunAsync(float[] input, int batchSize, CancellationToken cancellationToken);

    /// <summary>One forward per batch size: the first forward of each input shape is slow.</summary>
    Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken);
}

/// <summary>Loads the configured model. Called once, off the request path, at start-up.</summary>
public interface IModelBackendFactory
{
    IModelBackend Create(ModelOptions options, int modelInstances);
}
