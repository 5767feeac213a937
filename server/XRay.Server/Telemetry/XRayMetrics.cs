using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grpc.Core;
using XRay.Batching;

namespace XRay.Server.Telemetry;

/// <summary>
/// The server's own metrics, on one meter. Names are dotted with units (OpenTelemetry style); the Prometheus
/// exporter renders them as e.g. <c>xray_server_request_duration_seconds</c>. Histograms carry explicit buckets
/// fitted to this workload: a small CNN answers in about 5 ms, DenseNet-121 at batch 32 in about 1 s on CPU.
/// </summary>
public sealed class XRayMetrics : IDisposable
{
    public const string MeterName = "XRay.Server";

    public const string RequestDurationName = "xray.server.request.duration";
    public const string RequestTimeInQueueName = "xray.server.request.time_in_queue";
    public const string ActiveRequestsName = "xray.server.active_requests";
    public const string FailedRequestsName = "xray.server.requests.failed";
    public const string RejectedRequestsName = "xray.server.requests.rejected";
    public const string BatchDurationName = "xray.server.batch.duration";
    public const string BatchSizeName = "xray.server.batch.size";
    public const string BatchesName = "xray.server.batches";
    public const string ActiveBatchesName = "xray.server.active_batches";
    public const string ImagesClassifiedName = "xray.server.images.classified";
    public const string QueueDepthName = "xray.server.queue.depth";
    public const string QueueCapacityName = "xray.server.queue.capacity";
    public const string ModelInfoName = "xray.server.model.info";
    public const string ModelReadyName = "xray.server.model.ready";
    public const string MemoryReleasesName = "xray.server.memory.releases";
    public const string DecodesActiveName = "xray.server.decode.active";
    public const string DecodesWaitingName = "xray.server.decode.waiting";
    public const string DecodeWaitName = "xray.server.decode.wait_time";
    public const string NativeMemoryName = "xray.server.memory.native";

    // Tag names: OpenTelemetry RPC conventions where one exists (rpc.method is the full gRPC method name,
    // rpc.response.status_code its status name, e.g. DEADLINE_EXCEEDED), xray.* otherwise.
    public const string MethodTag = "rpc.method";
    public const string StatusCodeTag = "rpc.response.status_code";
    public const string ModelTag = "xray.model.name";
    public const string ReasonTag = "xray.rejection.reason";
    public const string ErrorTypeTag = "error.type";
    public const string MemoryReleaseReasonTag = "xray.memory.release.reason";
    public const string MemoryStateTag = "xray.memory.state";

    /// <summary>Seconds: 0.5 ms to 10 s in steps of about 1.5x, fine around a small CNN's 5 ms and DenseNet's 1 s.</summary>
    public static readonly IReadOnlyList<double> DurationBuckets =
    [
        0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
        0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10,
    ];

    /// <summary>Images per batch: every power of two up to the 4096 limit, plus the sizes between 8 and 64.</summary>
    public static readonly IReadOnlyList<int> BatchSizeBuckets = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024, 4096];

    // Every status the service answers a Classify request with other than OK, and every rejection reason: their
    // series are published at zero once the model is up, so rate() and the dashboard show 0, not "no data".
    private static readonly StatusCode[] FailureStatuses =
    [
        StatusCode.InvalidArgument, StatusCode.ResourceExhausted, StatusCode.DeadlineExceeded,
        StatusCode.Cancelled, StatusCode.Unavailable, StatusCode.Internal,
    ];

    // Canonical gRPC status names, indexed by code: what metrics and dashboards show.
    private static readonly string[] StatusNames =
    [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
        "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    ];

    private readonly Meter _meter;
    private readonly Histogram<double> _requestDuration;
    private readonly Histogram<double> _requestTimeInQueue;
    private readonly UpDownCounter<long> _activeRequests;
    private readonly Counter<long> _failedRequests;
    private readonly Counter<long> _rejectedRequests;
    private readonly Histogram<double> _batchDuration;
    private readonly Histogram<int> _batchSize;
    private readonly Counter<long> _batches;
    private readonly Counter<long> _memoryReleases;
    private readonly Histogram<double> _decodeWait;
    private Func<(int Active, int Waiting)>? _decodes;
    private Func<IReadOnlyList<(string State, long Bytes)>>? _nativeMemory;
    private readonly Counter<long> _imagesClassified;

    private volatile ModelGaugeSource? _model;
    // Models this process served before a swap: model_info reports them as 0, so that the exporter, which keeps
    // every series it has seen, does not go on showing them as served.
    private volatile KeyValuePair<string, object?>[][] _replacedModels = [];
    private volatile bool _ready;

    public XRayMetrics(IMeterFactory meterFactory)
    {
        _meter = meterFactory.Create(MeterName);

        _requestDuration = _meter.CreateHistogram(
            RequestDurationName, unit: "s",
            description: "Duration of Classify requests (each message of a ClassifyStream call counts as one) and GetModelInfo calls, from arrival to answer.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = DurationBuckets });
        _requestTimeInQueue = _meter.CreateHistogram(
            RequestTimeInQueueName, unit: "s",
            description: "Time a successful Classify request waited in the batcher's queue before the last of its images started running.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = DurationBuckets });
        _activeRequests = _meter.CreateUpDownCounter<long>(
            ActiveRequestsName, unit: "{request}",
            description: "Classify requests in flight: decoding, queued or running.");
        _failedRequests = _meter.CreateCounter<long>(
            FailedRequestsName, unit: "{request}",
            description: "Requests answered with a status other than OK, by method and status.");
        _rejectedRequests = _meter.CreateCounter<long>(
            RejectedRequestsName, unit: "{request}",
            description: "Classify requests turned away without being computed: queue_full, deadline, cancelled, invalid_input, shutting_down, not_ready.");
        _batchDuration = _meter.CreateHistogram(
            BatchDurationName, unit: "s",
            description: "Time the model took to run one batch (compute time, shared by every request in the batch).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = DurationBuckets });
        _batchSize = _meter.CreateHistogram(
            BatchSizeName, unit: "{image}",
            description: "Images in each executed batch.",
            advice: new InstrumentAdvice<int> { HistogramBucketBoundaries = BatchSizeBuckets });
        _batches = _meter.CreateCounter<long>(
            BatchesName, unit: "{batch}",
            description: "Batches executed by the model; error.type is set on those that failed.");
        _imagesClassified = _meter.CreateCounter<long>(
            ImagesClassifiedName, unit: "{image}",
            description: "Images the model classified (in batches that succeeded).");

        _meter.CreateObservableGauge(QueueDepthName, ObserveQueueDepth, unit: "{image}",
            description: "Images waiting in the batcher's queue.");
        _meter.CreateObservableGauge(QueueCapacityName, ObserveQueueCapacity, unit: "{image}",
            description: "Images the queue holds before requests are rejected (Batching:MaxQueueSize).");
        _meter.CreateObservableGauge(ActiveBatchesName, ObserveActiveBatches, unit: "{batch}",
            description: "Batches running on the model now (at most Batching:ModelInstances).");
        _meter.CreateObservableGauge(ModelInfoName, ObserveModelInfo,
            description: "1 for the served model, with its name, version, architecture, runtime, device and precision as labels.");
        _meter.CreateObservableGauge(ModelReadyName, () => _ready ? 1 : 0,
            description: "1 while the model is loaded and the server reports SERVING; 0 while loading, warming up or shutting down.");

        _memoryReleases = _meter.CreateCounter<long>(
            MemoryReleasesName, unit: "{release}",
            description: "Times the server gave free memory back to the system: idle (a full GC and an allocator purge after a quiet period), dirty_limit (an allocator purge when its freed pages exceeded Memory:PurgeDirtyAboveMegabytes).");
        _meter.CreateObservableGauge(NativeMemoryName, ObserveNativeMemory, unit: "By",
            description: "The native allocator's memory (jemalloc): allocated (held by the program: tensors, decoded images), resident, dirty (freed pages kept for reuse), retained (address space kept unmapped).");

        _decodeWait = _meter.CreateHistogram(
            DecodeWaitName, unit: "s",
            description: "Time a PNG/JPEG image waited for a slot of the decode pool (Decoding:MaxConcurrentDecodes) before decoding.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = DurationBuckets });
        _meter.CreateObservableGauge(DecodesActiveName, () => _decodes?.Invoke().Active ?? 0, unit: "{decode}",
            description: "PNG/JPEG decodes running now (at most Decoding:MaxConcurrentDecodes).");
        _meter.CreateObservableGauge(DecodesWaitingName, () => _decodes?.Invoke().Waiting ?? 0, unit: "{decode}",
            description: "PNG/JPEG decodes waiting for a slot of the decode pool (their images already hold room in the queue).");
        BatcherObserver = new BatchObserver(this);
    }

    /// <summary>Where the decode gauges read decodes running and waiting from.</summary>
    public void ObserveDecodesFrom(Func<(int Active, int Waiting)> source) => _decodes = source;

    /// <summary>An image waited <paramref name="wait"/> for a decode slot.</summary>
    public void DecodeWaited(TimeSpan wait) => _decodeWait.Record(wait.TotalSeconds);

    /// <summary>Where <see cref="NativeMemoryName"/> reads its values (state, bytes) from; none until set.</summary>
    public void ObserveNativeMemoryFrom(Func<IReadOnlyList<(string State, long Bytes)>> source) => _nativeMemory = source;

    /// <summary>The server gave memory back; <paramref name="reason"/>: idle or dirty_limit.</summary>
    public void MemoryReleased(string reason) =>
        _memoryReleases.Add(1, new KeyValuePair<string, object?>(MemoryReleaseReasonTag, reason));

    private IEnumerable<Measurement<long>> ObserveNativeMemory() =>
        _nativeMemory?.Invoke().Select(m => new Measurement<long>(m.Bytes, new KeyValuePair<string, object?>(MemoryStateTag, m.State))) ?? [];

    /// <summary>Hook the batcher calls for every executed batch.</summary>
    public BatcherObserver BatcherObserver { get; }

    /// <summary>The model is loaded and has a batcher: the gauges follow it from now on.</summary>
    public void ModelLoaded(ModelGaugeSource model)
    {
        if (_model is { } previous)
        {
            KeyValuePair<string, object?>[] served = ModelInfoTags(model);
            _replacedModels = [.. _replacedModels.Append(ModelInfoTags(previous)).DistinctBy(Describe).Where(tags => Describe(tags) != Describe(served))];
        }
        _model = model;
        foreach (string reason in RejectionReasons.All)
        {
            _rejectedRequests.Add(0, new KeyValuePair<string, object?>(ReasonTag, reason));
        }
        foreach (string reason in new[] { "idle", "dirty_limit" })
        {
            _memoryReleases.Add(0, new KeyValuePair<string, object?>(MemoryReleaseReasonTag, reason));
        }
        foreach (string method in new[] { ClassifierMethods.Classify, ClassifierMethods.ClassifyStream })
        {
            foreach (StatusCode status in FailureStatuses)
            {
                _failedRequests.Add(0, new KeyValuePair<string, object?>(MethodTag, method),
                                       new KeyValuePair<string, object?>(StatusCodeTag, StatusName(status)));
            }
        }
    }

    /// <summary>Whether the server reports SERVING.</summary>
    public void SetReady(bool ready) => _ready = ready;

    /// <summary>Counts a request in flight; returns the timestamp to pass to <see cref="RequestStop"/>.</summary>
    public long RequestStart(string method)
    {
        _activeRequests.Add(1, new KeyValuePair<string, object?>(MethodTag, method));
        return Stopwatch.GetTimestamp();
    }

    /// <summary>A request started with <see cref="RequestStart"/> was answered with <paramref name="status"/>.</summary>
    public void RequestStop(string method, string? model, StatusCode status, long startTimestamp)
    {
        var methodTag = new KeyValuePair<string, object?>(MethodTag, method);
        _activeRequests.Add(-1, methodTag);
        RecordRequest(method, model, status, startTimestamp);
    }

    /// <summary>Records a request that is not counted in flight (GetModelInfo).</summary>
    public void RecordRequest(string method, string? model, StatusCode status, long startTimestamp)
    {
        var statusTag = new KeyValuePair<string, object?>(StatusCodeTag, StatusName(status));
        var methodTag = new KeyValuePair<string, object?>(MethodTag, method);
        if (_requestDuration.Enabled)
        {
            var tags = new TagList { methodTag, statusTag };
            if (model is not null)
            {
                tags.Add(ModelTag, model);
            }
            _requestDuration.Record(Stopwatch.GetElapsedTime(startTimestamp).TotalSeconds, tags);
        }
        if (status != StatusCode.OK)
        {
            _failedRequests.Add(1, methodTag, statusTag);
        }
    }

    /// <summary>A request was turned away uncomputed; <paramref name="reason"/> is one of <see cref="RejectionReasons"/>.</summary>
    public void RequestRejected(string reason) =>
        _rejectedRequests.Add(1, new KeyValuePair<string, object?>(ReasonTag, reason));

    /// <summary>How long a successful request waited in the queue.</summary>
    public void RequestQueued(TimeSpan timeInQueue) => _requestTimeInQueue.Record(timeInQueue.TotalSeconds);

    private void BatchCompleted(int batchSize, TimeSpan duration, Exception? error)
    {
        var tags = new TagList();
        if (error is not null)
        {
            tags.Add(ErrorTypeTag, error.GetType().FullName);
        }
        _batches.Add(1, tags);
        _batchSize.Record(batchSize, tags);
        _batchDuration.Record(duration.TotalSeconds, tags);
        if (error is null)
        {
            _imagesClassified.Add(batchSize);
        }
    }

    private IEnumerable<Measurement<int>> ObserveQueueDepth() =>
        _model is { } model ? [new Measurement<int>(model.QueuedItems())] : [new Measurement<int>(0)];

    private IEnumerable<Measurement<int>> ObserveQueueCapacity() =>
        _model is { } model ? [new Measurement<int>(model.QueueCapacity)] : [];

    private IEnumerable<Measurement<int>> ObserveActiveBatches() =>
        _model is { } model ? [new Measurement<int>(model.RunningBatches())] : [new Measurement<int>(0)];

    private IEnumerable<Measurement<int>> ObserveModelInfo()
    {
        if (_model is not { } model)
        {
            return [];
        }
        return [new Measurement<int>(1, ModelInfoTags(model)), .. _replacedModels.Select(tags => new Measurement<int>(0, tags))];
    }

    private static KeyValuePair<string, object?>[] ModelInfoTags(ModelGaugeSource model) =>
    [
        new(ModelTag, model.Name),
        new("xray.model.version", model.Version),
        new("xray.model.architecture", model.Architecture),
        new("xray.model.runtime", model.Runtime),
        new("xray.model.device", model.Device),
        new("xray.model.precision", model.Precision),
    ];

    private static string Describe(KeyValuePair<string, object?>[] tags) => string.Join(",", tags.Select(tag => $"{tag.Key}={tag.Value}"));

    /// <summary>The canonical name of a status code, e.g. <c>DEADLINE_EXCEEDED</c>: the <see cref="StatusCodeTag"/> value.</summary>
    public static string StatusName(StatusCode code) =>
        (int)code >= 0 && (int)code < StatusNames.Length ? StatusNames[(int)code] : ((int)code).ToString(System.Globalization.CultureInfo.InvariantCulture);

    public void Dispose() => _meter.Dispose();

    private sealed class BatchObserver(XRayMetrics metrics) : BatcherObserver
    {
        public override void BatchCompleted(int batchSize, TimeSpan duration, Exception? error) =>
            metrics.BatchCompleted(batchSize, duration, error);
    }
}

/// <summary>
/// What the model gauges read once a model is loaded: its labels and its batcher's live counts. Plain values and
/// delegates, so that telemetry depends on no other layer of the server.
/// </summary>
public sealed record ModelGaugeSource(
    string Name, string Version, string Architecture, string Runtime, string Device, string Precision,
    Func<int> QueuedItems, int QueueCapacity, Func<int> RunningBatches);

/// <summary>Values of the <c>xray.rejection.reason</c> tag.</summary>
public static class RejectionReasons
{
    public const string QueueFull = "queue_full";
    public const string Deadline = "deadline";
    /// <summary>Refused at admission: the deadline was shorter than the estimated wait in the queue.</summary>
    public const string DeadlineUnmeetable = "deadline_unmeetable";
    public const string Cancelled = "cancelled";
    public const string InvalidInput = "invalid_input";
    public const string ShuttingDown = "shutting_down";
    public const string NotReady = "not_ready";

    public static readonly IReadOnlyList<string> All = [QueueFull, Deadline, DeadlineUnmeetable, Cancelled, InvalidInput, ShuttingDown, NotReady];
}

/// <summary>Full gRPC method names, the values of the <c>rpc.method</c> tag.</summary>
public static class ClassifierMethods
{
    public const string Classify = "xray.v1.Classifier/Classify";
    public const string ClassifyStream = "xray.v1.Classifier/ClassifyStream";
    public const string GetModelInfo = "xray.v1.Classifier/GetModelInfo";
}
