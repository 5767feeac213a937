using System.Diagnostics;

namespace XRay.Server.Telemetry;

/// <summary>
/// Cumulative counts and durations of the served model, recorded where the metrics are (every classifying request's
/// outcome and queue time, every batch): what the Open Inference Protocol's ModelStatistics reports. Reset when another
/// model is served.
/// </summary>
public sealed class ServingStatistics
{
    private readonly Lock _lock = new();
    private readonly SortedDictionary<int, Duration> _batches = [];
    private Duration _success;
    private Duration _fail;
    private Duration _queue;
    private Duration _compute;
    private long _images;
    private long _lastInferenceUnixMs;

    /// <summary>A count and a total duration in nanoseconds.</summary>
    public readonly record struct Duration(long Count, long Nanoseconds)
    {
        public Duration Add(TimeSpan elapsed) => new(Count + 1, Nanoseconds + (long)(elapsed.Ticks * (1_000_000_000.0 / TimeSpan.TicksPerSecond)));
    }

    /// <summary>What <see cref="ServingStatistics"/> holds at one moment.</summary>
    public sealed record Snapshot(
        long LastInferenceUnixMs, long ImagesClassified, long Executions,
        Duration Success, Duration Fail, Duration Queue, Duration Compute,
        IReadOnlyList<(int BatchSize, Duration Compute)> Batches);

    public void Reset()
    {
        lock (_lock)
        {
            _batches.Clear();
            _success = _fail = _queue = _compute = default;
            _images = 0;
            _lastInferenceUnixMs = 0;
        }
    }

    public void RequestCompleted(bool succeeded, long startTimestamp)
    {
        TimeSpan elapsed = Stopwatch.GetElapsedTime(startTimestamp);
        long now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        lock (_lock)
        {
            if (succeeded) _success = _success.Add(elapsed);
            else _fail = _fail.Add(elapsed);
            _lastInferenceUnixMs = now;
        }
    }

    public void RequestQueued(TimeSpan timeInQueue)
    {
        lock (_lock) _queue = _queue.Add(timeInQueue);
    }

    public void BatchSucceeded(int batchSize, TimeSpan duration)
    {
        lock (_lock)
        {
            _compute = _compute.Add(duration);
            _images += batchSize;
            _batches[batchSize] = _batches.GetValueOrDefault(batchSize).Add(duration);
        }
    }

    public Snapshot Read()
    {
        lock (_lock)
        {
            return new Snapshot(_lastInferenceUnixMs, _images, _compute.Count, _success, _fail, _queue, _compute,
                [.. _batches.Select(batch => (batch.Key, batch.Value))]);
        }
    }
}

/// <summary>Full gRPC method names of the Open Inference Protocol service, the values of the <c>rpc.method</c> tag.</summary>
public static class InferenceMethods
{
    public const string Service = "inference.GRPCInferenceService";
    public const string ServerLive = Service + "/ServerLive";
    public const string ServerReady = Service + "/ServerReady";
    public const string ModelReady = Service + "/ModelReady";
    public const string ServerMetadata = Service + "/ServerMetadata";
    public const string ModelMetadata = Service + "/ModelMetadata";
    public const string ModelInfer = Service + "/ModelInfer";
    public const string ModelStreamInfer = Service + "/ModelStreamInfer";
    public const string ModelConfig = Service + "/ModelConfig";
    public const string ModelStatistics = Service + "/ModelStatistics";
}
