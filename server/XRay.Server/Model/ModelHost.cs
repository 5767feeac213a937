using Grpc.Health.V1;
using Grpc.HealthCheck;
using Microsoft.Extensions.Options;
using XRay.Batching;
using XRay.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Model;

/// <summary>The model as served: backend, preprocessing, the buffers images are decoded into and the batcher in front of it.</summary>
public sealed record ServedModel(
    IModelBackend Backend,
    ImagePreprocessor Preprocessor,
    ImageBuffers Buffers,
    DynamicBatcher<QueuedImage, float[]> Batcher,
    IReadOnlyList<float> Thresholds)
{
    public ModelManifest Manifest => Backend.Manifest;

    /// <summary>Logits to probabilities: the manifest's calibration, or the plain sigmoid. Every API answers through this.</summary>
    public ProbabilityMap Probabilities { get; } = new(Backend.Manifest);

    /// <summary>What the model gauges read: this model's labels and its batcher's live counts.</summary>
    public ModelGaugeSource Gauges => new(Manifest.Name, Manifest.Version, Manifest.Architecture, Backend.Runtime, Backend.Device, Backend.Precision,
        () => Batcher.QueuedItems, Batcher.Options.MaxQueueSize, () => Batcher.RunningBatches);
}

/// <summary>
/// Owns the served model's lifetime. Loads and warms it up in the background at start-up, so that health
/// reports NOT_SERVING (and calls get UNAVAILABLE) until it can answer at full speed; swaps in another model
/// while serving (<see cref="SwapAsync"/>); on shutdown stops admitting requests and lets the queued ones finish.
/// </summary>
public sealed partial class ModelHost(
    IModelBackendFactory factory,
    IOptions<ModelOptions> modelOptions,
    IOptions<BatchingOptions> batchingOptions,
    HealthServiceImpl health,
    IHostApplicationLifetime lifetime,
    TimeProvider timeProvider,
    XRayMetrics metrics,
    ILogger<ModelHost> logger) : IHostedLifecycleService, IAsyncDisposable
{
    /// <summary>The health service name clients check (the empty name means the whole server).</summary>
    public const string ServiceName = "xray.v1.Classifier";

    private readonly CancellationTokenSource _stopping = new();
    private readonly SemaphoreSlim _swapping = new(1, 1);
    private readonly List<Task> _retiring = [];
    private Task _loading = Task.CompletedTask;
    private Task? _draining;
    private volatile ServedModel? _current;
    private int _disposed;

    /// <summary>The model, once loaded and warmed up; null before that.</summary>
    public ServedModel? Current => _current;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        SetHealth(HealthCheckResponse.Types.ServingStatus.NotServing);
        lifetime.ApplicationStopping.Register(BeginDrain);
        return Task.CompletedTask;
    }

    /// <summary>
    /// Starts loading once every hosted service has started, Kestrel included: a server that cannot bind its
    /// addresses stops before it loads a model.
    /// </summary>
    public Task StartedAsync(CancellationToken cancellationToken)
    {
        _loading = Task.Run(() => LoadAsync(_stopping.Token), CancellationToken.None);
        return Task.CompletedTask;
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private async Task LoadAsync(CancellationToken cancellationToken)
    {
        try
        {
            _current = await CreateAsync(modelOptions.Value, cancellationToken).ConfigureAwait(false);
            metrics.ModelLoaded(_current.Gauges);
            if (_stopping.IsCancellationRequested)
            {
                return;
            }
            SetHealth(HealthCheckResponse.Types.ServingStatus.Serving);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        catch (Exception ex)
        {
            // Serving without a model is pointless: fail loudly and exit non-zero. A checkpoint that cannot be read is
            // the user's to fix (one line, exit 3); anything else is a bug (the stack trace, exit 1).
            if (IsUnreadableCheckpoint(ex))
            {
                LogCheckpointUnreadable(logger, modelOptions.Value.Path ?? "", ex.Message.TrimEnd('.'));
                Environment.ExitCode = XRay.ExitCodes.NotFound;
            }
            else
            {
                LogLoadFailed(logger, ex);
                Environment.ExitCode = XRay.ExitCodes.Internal;
            }
            lifetime.StopApplication();
        }
    }

    /// <summary>Loads and warms up a model with its own batcher; nothing is served from it yet.</summary>
    private async Task<ServedModel> CreateAsync(ModelOptions options, CancellationToken cancellationToken)
    {
        BatchingOptions batching = batchingOptions.Value;
        long started = timeProvider.GetTimestamp();
        IModelBackend backend = factory.Create(options, batching.ModelInstances);
        try
        {
            ModelManifest manifest = backend.Manifest;
            LogLoaded(logger, manifest.Name, manifest.Version, manifest.Architecture, backend.Runtime, backend.Device, backend.Precision,
                timeProvider.GetElapsedTime(started).TotalSeconds);

            IReadOnlyList<int> sizes = options.WarmupBatchSizes(batching.MaxBatchSize);
            started = timeProvider.GetTimestamp();
            await backend.WarmUpAsync(sizes, cancellationToken).ConfigureAwait(false);
            PreferredBatchSizes? preferred = null;
            if (options.Warmup == ModelOptions.WarmupMeasure)
            {
                preferred = await BatchSizeProfiler.LearnAsync(backend, batching.MaxBatchSize, timeProvider, cancellationToken).ConfigureAwait(false);
                LogPreferredSizes(logger, string.Join(",", preferred.Sizes));
            }
            LogWarmedUp(logger, string.Join(",", sizes), timeProvider.GetElapsedTime(started).TotalSeconds);

            var buffers = new ImageBuffers(manifest.Preprocessing.OutputLength, batching.MaxBatchSize, batching.ModelInstances);
            var batcher = new DynamicBatcher<QueuedImage, float[]>(new ImageBatchHandler(backend, buffers), batching, timeProvider, metrics.BatcherObserver)
            {
                PreferredBatchSizes = preferred,
            };
            return new ServedModel(backend, new ImagePreprocessor(manifest.Preprocessing), buffers, batcher, manifest.EffectiveThresholds);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Loads the checkpoint at <paramref name="path"/> (empty: the built-in default model) with the configured
    /// device, precision and warm-up, beside the served model, then serves it. Requests queued on the old model
    /// finish there (each batcher runs one model, so no batch mixes the two); the old model is disposed once drained.
    /// Returns the new model and the one it replaced.
    /// </summary>
    /// <exception cref="ModelSwapException">Not serving yet or shutting down, another swap running, or the model
    /// failed to load or warm up; the served model is unchanged.</exception>
    public async Task<(ServedModel Current, ServedModel Previous)> SwapAsync(string? path, CancellationToken cancellationToken)
    {
        if (!await _swapping.WaitAsync(TimeSpan.Zero, cancellationToken).ConfigureAwait(false))
        {
            throw new ModelSwapException(ModelSwapException.Failure.Busy, "Another model is being loaded; try again when it is served.");
        }
        try
        {
            if (_current is null || _stopping.IsCancellationRequested)
            {
                throw new ModelSwapException(ModelSwapException.Failure.NotServing, "The server is not serving a model (starting or shutting down).");
            }
            ServedModel loaded;
            try
            {
                using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _stopping.Token);
                loaded = await CreateAsync(modelOptions.Value.WithPath(path), linked.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                LogSwapFailed(logger, path ?? "", ex);
                throw new ModelSwapException(ModelSwapException.Failure.LoadFailed, $"The model at '{path}' failed to load: {ex.Message}", ex);
            }

            if (_stopping.IsCancellationRequested)
            {
                await DisposeUnservedAsync(loaded).ConfigureAwait(false);
                throw new ModelSwapException(ModelSwapException.Failure.NotServing, "The server is shutting down.");
            }
            ServedModel previous = Interlocked.Exchange(ref _current, loaded)!;
            metrics.ModelLoaded(loaded.Gauges);
            LogSwapped(logger, previous.Manifest.Name, previous.Manifest.Version, loaded.Manifest.Name, loaded.Manifest.Version);
            lock (_retiring)
            {
                _retiring.Add(RetireAsync(previous));
            }
            return (loaded, previous);
        }
        finally
        {
            _swapping.Release();
        }
    }

    private static async Task DisposeUnservedAsync(ServedModel model)
    {
        await model.Batcher.DisposeAsync().ConfigureAwait(false);
        model.Backend.Dispose();
    }

    /// <summary>Lets a replaced model finish what it has queued, then frees it.</summary>
    private static async Task RetireAsync(ServedModel model)
    {
        await model.Batcher.DrainAsync().ConfigureAwait(false);
        await model.Batcher.DisposeAsync().ConfigureAwait(false);
        model.Backend.Dispose();
    }

    private Task RetiringAsync()
    {
        lock (_retiring)
        {
            return Task.WhenAll(_retiring);
        }
    }

    private void BeginDrain()
    {
        SetHealth(HealthCheckResponse.Types.ServingStatus.NotServing);
        _stopping.Cancel();
        if (_current is { } model)
        {
            LogDraining(logger, model.Batcher.QueuedItems);
            _draining = model.Batcher.DrainAsync();
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested)
        {
            BeginDrain();
        }
        try
        {
            await _loading.WaitAsync(cancellationToken).ConfigureAwait(false);
            _draining ??= _current?.Batcher.DrainAsync(cancellationToken);
            if (_draining is not null)
            {
                await _draining.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            await RetiringAsync().WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            LogDrainTimedOut(logger);
        }
    }

    public async ValueTask DisposeAsync()
    {
        // The container disposes it twice: as the singleton and as the hosted service resolved from it.
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }
        _stopping.Cancel();
        try
        {
            await _loading.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        if (_current is { } model)
        {
            await model.Batcher.DisposeAsync().ConfigureAwait(false);
            model.Backend.Dispose();
        }
        await RetiringAsync().ConfigureAwait(false);
        _stopping.Dispose();
    }

    private void SetHealth(HealthCheckResponse.Types.ServingStatus status)
    {
        health.SetStatus("", status);
        health.SetStatus(ServiceName, status);
        metrics.SetReady(status == HealthCheckResponse.Types.ServingStatus.Serving);
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Information,
        Message = "Loaded model {Name} {Version} ({Architecture}) on {Runtime} {Device} in {Precision} in {Seconds:F1} s")]
    private static partial void LogLoaded(ILogger logger, string name, string version, string architecture, string runtime, string device, string precision, double seconds);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Warmed up batch sizes {BatchSizes} in {Seconds:F1} s; serving")]
    private static partial void LogWarmedUp(ILogger logger, string batchSizes, double seconds);

    [LoggerMessage(EventId = 6, Level = LogLevel.Information, Message = "Measured every batch size; the batcher prefers {BatchSizes} (the others run slower per image than a smaller size)")]
    private static partial void LogPreferredSizes(ILogger logger, string batchSizes);

    private static bool IsUnreadableCheckpoint(Exception ex) =>
        ex is IOException or InvalidDataException or UnauthorizedAccessException or System.Text.Json.JsonException;

    [LoggerMessage(EventId = 8, Level = LogLevel.Critical, Message = "The checkpoint at '{Path}' cannot be read: {Reason}; the server stops")]
    private static partial void LogCheckpointUnreadable(ILogger logger, string path, string reason);

    [LoggerMessage(EventId = 3, Level = LogLevel.Critical, Message = "The model failed to load; the server stops")]
    private static partial void LogLoadFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 4, Level = LogLevel.Information, Message = "Shutting down: no new requests; finishing {QueuedImages} queued images")]
    private static partial void LogDraining(ILogger logger, int queuedImages);

    [LoggerMessage(EventId = 5, Level = LogLevel.Warning, Message = "Shutdown timed out before the queue drained")]
    private static partial void LogDrainTimedOut(ILogger logger);

    [LoggerMessage(EventId = 6, Level = LogLevel.Information, Message = "Swapped model {OldName} {OldVersion} for {Name} {Version}; the old one finishes its queue")]
    private static partial void LogSwapped(ILogger logger, string oldName, string oldVersion, string name, string version);

    [LoggerMessage(EventId = 7, Level = LogLevel.Error, Message = "The model at '{Path}' failed to load; the served model is unchanged")]
    private static partial void LogSwapFailed(ILogger logger, string path, Exception exception);
}
