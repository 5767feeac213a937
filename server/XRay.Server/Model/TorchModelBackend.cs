using XRay.Model;

namespace XRay.Server.Model;

/// <summary>Serves a checkpoint (or the built-in default model) with TorchSharp via <see cref="ModelRunner"/>.</summary>
public sealed class TorchModelBackend : IModelBackend
{
    private readonly LoadedModel _model;
    private readonly ModelRunner _runner;

    /// <summary>Takes ownership of <paramref name="model"/>: it is disposed with the backend, or here if the runner cannot start.</summary>
    public TorchModelBackend(LoadedModel model, RunnerOptions options)
    {
        _model = model;
        try
        {
            _runner = new ModelRunner(model, options);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public ModelManifest Manifest => _runner.Manifest;
    public string Device => _runner.Device;
    public string Precision => _runner.Precision;

    public Task<float[]> RunAsync(float[] input, int batchSize, CancellationToken cancellationToken) =>
        _runner.RunAsync(input, batchSize, cancellationToken);

    public Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken) =>
        _runner.WarmUpAsync(batchSizes, cancellationToken);

    public void Dispose()
    {
        _runner.Dispose();
        _model.Dispose();
    }
}

public sealed class TorchModelBackendFactory : IModelBackendFactory
{
    public IModelBackend Create(ModelOptions options, int modelInstances)
    {
        LoadedModel model = string.IsNullOrEmpty(options.Path) ? DefaultModel.Create() : Checkpoint.Load(options.Path);
        return new TorchModelBackend(model, new RunnerOptions
        {
            Device = options.Device,
            Precision = options.Precision,
            Workers = modelInstances,
        });
    }
}
