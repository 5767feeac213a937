using System.Collections.Concurrent;
using Grpc.Core;
using XRay.Contracts.V1;
using XRay.LoadTest.Statistics;

namespace XRay.LoadTest.Load;

/// <summary>
/// Everything one run records, from many callers at once. Counters marked "live" include the warm-up and
/// feed the progress display; the rest only cover the measured requests.
/// </summary>
internal sealed class RunRecorder
{
    private readonly long[] _statusCounts = new long[17]; // gRPC codes 0..16
    private readonly ConcurrentDictionary<int, long> _imagesByBatchSize = new();
    private long _okRequests;
    private long _okImages;
    private long _okRequestsInWindow;
    private long _okImagesInWindow;
    private long _dropped;
    private long _computeShareNanoseconds;
    private long _liveSent;
    private long _liveCompleted;
    private long _liveFailed;

    /// <summary>Request latency: from sending (closed loop) or from the scheduled arrival (open loop) to the response.</summary>
    public LatencyRecorder Latency { get; } = new();

    /// <summary>Per image: the server's queue_us.</summary>
    public LatencyRecorder ServerQueue { get; } = new();

    /// <summary>Per image: the server's compute_us (the whole batch's forward).</summary>
    public LatencyRecorder ServerCompute { get; } = new();

    /// <summary>Open loop: how late requests left against their schedule (the load tester keeping up, or not).</summary>
    public LatencyRecorder ScheduleLag { get; } = new();

    /// <summary>Measured completions over time.</summary>
    public TimelineRecorder Timeline { get; } = new();

    public long OkRequests => Volatile.Read(ref _okRequests);
    public long OkImages => Volatile.Read(ref _okImages);
    public long OkRequestsInWindow => Volatile.Read(ref _okRequestsInWindow);
    public long OkImagesInWindow => Volatile.Read(ref _okImagesInWindow);
    public long Dropped => Volatile.Read(ref _dropped);
    public long Failed => _statusCounts.Skip(1).Sum();

    /// <summary>Seconds the model spent on the measured images: each image's share of its batch's compute.</summary>
    public double ComputeShareSeconds => Volatile.Read(ref _computeShareNanoseconds) / 1e9;

    public long LiveSent => Volatile.Read(ref _liveSent);
    public long LiveCompleted => Volatile.Read(ref _liveCompleted);
    public long LiveFailed => Volatile.Read(ref _liveFailed);

    public void Sent() => Interlocked.Increment(ref _liveSent);

    /// <param name="completedInWindow">Answered before the measurement window closed: counts towards throughput.</param>
    public void RecordSuccess(bool measured, long latencyMicroseconds, ClassifyResponse response, bool completedInWindow)
    {
        Interlocked.Increment(ref _liveCompleted);
        if (!measured) return;
        Latency.Record(latencyMicroseconds);
        Interlocked.Increment(ref _statusCounts[(int)StatusCode.OK]);
        Interlocked.Increment(ref _okRequests);
        Interlocked.Add(ref _okImages, response.Predictions.Count);
        if (completedInWindow)
        {
            Interlocked.Increment(ref _okRequestsInWindow);
            Interlocked.Add(ref _okImagesInWindow, response.Predictions.Count);
        }
        foreach (Prediction prediction in response.Predictions)
        {
            if (prediction.Timing is not { } timing) continue;
            ServerQueue.Record(timing.QueueUs);
            ServerCompute.Record(timing.ComputeUs);
            int batch = Math.Max(1, timing.BatchSize);
            _imagesByBatchSize.AddOrUpdate(batch, 1, static (_, count) => count + 1);
            Interlocked.Add(ref _computeShareNanoseconds, timing.ComputeUs * 1000 / batch);
        }
    }

    public void RecordFailure(bool measured, StatusCode code)
    {
        Interlocked.Increment(ref _liveCompleted);
        Interlocked.Increment(ref _liveFailed);
        if (measured) Interlocked.Increment(ref _statusCounts[Math.Clamp((int)code, 0, 16)]);
    }

    public void RecordDropped(bool measured)
    {
        if (measured) Interlocked.Increment(ref _dropped);
    }

    /// <summary>Measured requests per status, by gRPC's canonical names (OK, RESOURCE_EXHAUSTED, ...); only those seen.</summary>
    public SortedDictionary<string, long> StatusCounts()
    {
        var counts = new SortedDictionary<string, long>(StringComparer.Ordinal);
        for (int code = 0; code < _statusCounts.Length; code++)
        {
            long count = Volatile.Read(ref _statusCounts[code]);
            if (count > 0) counts[CanonicalName((StatusCode)code)] = count;
        }
        return counts;
    }

    /// <summary>Images answered, by the size of the batch they ran in.</summary>
    public SortedDictionary<int, long> ImagesByBatchSize() => new(_imagesByBatchSize);

    /// <summary>"ResourceExhausted" to "RESOURCE_EXHAUSTED", as gRPC's specification spells status codes.</summary>
    public static string CanonicalName(StatusCode code)
    {
        string name = code.ToString();
        var builder = new System.Text.StringBuilder(name.Length + 4);
        for (int i = 0; i < name.Length; i++)
        {
            if (i > 0 && char.IsUpper(name[i]) && !char.IsUpper(name[i - 1])) builder.Append('_');
            builder.Append(char.ToUpperInvariant(name[i]));
        }
        return builder.ToString();
    }
}
