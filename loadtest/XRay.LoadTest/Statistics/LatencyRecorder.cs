using HdrHistogram;

namespace XRay.LoadTest.Statistics;

/// <summary>
/// Thread-safe record of durations in microseconds. Percentiles come from an HdrHistogram (3 significant digits:
/// within 0.1%, from 1 us to 1 h); count, mean, min and max are exact.
/// </summary>
internal sealed class LatencyRecorder
{
    /// <summary>One hour: longer values are recorded as this.</summary>
    public const long HighestTrackableMicroseconds = 3_600_000_000;

    private readonly LongConcurrentHistogram _histogram = new(1, HighestTrackableMicroseconds, 3);
    private long _count;
    private long _sum;
    private long _min = long.MaxValue;
    private long _max = long.MinValue;

    public long Count => Volatile.Read(ref _count);

    /// <summary>Records one duration; negative values count as 0.</summary>
    public void Record(long microseconds)
    {
        long value = Math.Clamp(microseconds, 0, HighestTrackableMicroseconds);
        _histogram.RecordValue(value);
        Interlocked.Add(ref _sum, value);
        Interlocked.Increment(ref _count);
        UpdateMin(value);
        UpdateMax(value);
    }

    /// <summary>The value at or below which <paramref name="percentile"/> % of the values lie (0 when empty).</summary>
    public long ValueAtPercentile(double percentile) => Count == 0 ? 0 : _histogram.GetValueAtPercentile(percentile);

    /// <summary>Min, mean, p50, p90, p95, p99, p99.9, max, in milliseconds.</summary>
    public LatencySummary Summarize()
    {
        long count = Count;
        if (count == 0) return LatencySummary.Empty;
        long min = Volatile.Read(ref _min), max = Volatile.Read(ref _max);
        static double Ms(double microseconds) => Math.Round(microseconds / 1000.0, 3);
        // A histogram percentile is its bucket's upper edge: keep it within the exact min and max.
        double At(double percentile) => Ms(Math.Clamp(ValueAtPercentile(percentile), min, max));
        return new LatencySummary
        {
            Count = count,
            Min = Ms(min),
            Mean = Ms((double)Volatile.Read(ref _sum) / count),
            P50 = At(50),
            P90 = At(90),
            P95 = At(95),
            P99 = At(99),
            P999 = At(99.9),
            Max = Ms(max),
        };
    }

    private void UpdateMin(long value)
    {
        long current = Volatile.Read(ref _min);
        while (value < current)
        {
            long seen = Interlocked.CompareExchange(ref _min, value, current);
            if (seen == current) return;
            current = seen;
        }
    }

    private void UpdateMax(long value)
    {
        long current = Volatile.Read(ref _max);
        while (value > current)
        {
            long seen = Interlocked.CompareExchange(ref _max, value, current);
            if (seen == current) return;
            current = seen;
        }
    }
}
