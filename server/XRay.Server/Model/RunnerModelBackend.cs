using XRay.Model;

namespace XRay.Server.Model;

/// <summary>Serves a model through an <see cref="IInferenceRunner"/>: TorchSharp's <see cref="ModelRunner"/> or <see cref="OnnxRuntimeRunner"/>.</summary>
public sealed class RunnerModelBackend(IInferenceRunner runner, IDisposable? owned = null) : IModelBackend
{
    public ModelManifest Manifest => runner.Manifest;
    public string Runtime => runner.Runtime;
    public string Device => runner.Device;
    public string Precision => runner.Precision;

    public Task RunAsync(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits, CancellationToken cancellationToken) =>
        runner.RunAsync(input, batchSize, logits, cancellationToken);

    public Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken) =>
        runner.WarmUpAsync(batchSizes, cancellationToken);

    public void Dispose()
    {
        runner.Dispose();
        owned?.Dispose();
    }
}

/// <summary>
/// Loads the checkpoint (or the built-in default model) and starts the runtime <see cref="ModelOptions.Runtime"/> names.
/// For ONNX Runtime the loaded network is exported to an ONNX graph in memory and then released, so every checkpoint
/// serves on either runtime without an extra file.
/// </summary>
public sealed class ModelBackendFactory : IModelBackendFactory
{
    public IModelBackend Create(ModelOptions options, int modelInstances)
    {
        string runtime = options.ResolveRuntime();
        LoadedModel model = string.IsNullOrEmpty(options.Path) ? DefaultModel.Create() : Checkpoint.Load(options.Path);
        var runnerOptions = new RunnerOptions
        {
            Device = options.Device,
            Precision = options.Precision,
            Workers = modelInstances,
        };
        try
        {
            IInferenceRunner runner = InferenceRuntimes.Create(model, runtime, runnerOptions);
            if (runtime == ModelOptions.OnnxRuntime)
            {
                // The session holds its own copy of the weights: release the network's.
                model.Dispose();
                return new RunnerModelBackend(runner);
            }

            return new RunnerModelBackend(runner, model);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }
}
