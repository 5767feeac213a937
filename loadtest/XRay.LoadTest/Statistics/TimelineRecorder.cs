using System.Diagnostics;

namespace XRay.LoadTest.Statistics;

/// <summary>
/// When each measured request completed, how long it took and how many images it carried, to show a run over time
/// (<see cref="TimelinePoint"/>). Thread-safe. Keeps at most <see cref="MaxSamples"/> completions (16 bytes each); later
/// ones are left out of the timeline, not out of the run's totals.
/// </summary>
internal sealed class TimelineRecorder
{
    public const int MaxSamples = 2_000_000;

    /// <summary>Interval widths the timeline picks from, in seconds.</summary>
    private static readonly double[] Steps = [0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600];

    private readonly Lock _lock = new();
    private readonly List<Sample> _samples = [];

    private readonly record struct Sample(long Timestamp, int LatencyUs, int Images);

    /// <param name="timestamp">Completion, a <see cref="Stopwatch"/> timestamp.</param>
    /// <param name="images">Images answered; 0 for a failed request.</param>
    public void Record(long timestamp, long latencyMicroseconds, int images)
    {
        var sample = new Sample(timestamp, (int)Math.Clamp(latencyMicroseconds, 0, int.MaxValue), images);
        lock (_lock)
        {
            if (_samples.Count < MaxSamples) _samples.Add(sample);
        }
    }

    /// <summary>
    /// The completions in [<paramref name="start"/>, start + <paramref name="windowSeconds"/>] in equal intervals: at most
    /// <paramref name="maxPoints"/>, and wide enough to hold about 20 completions each on average, so percentiles mean something,
    /// unless that leaves fewer than 10 (or <paramref name="maxPoints"/>).
    /// </summary>
    public IReadOnlyList<TimelinePoint> Build(long start, double windowSeconds, int maxPoints = 40)
    {
        Sample[] samples;
        lock (_lock) samples = [.. _samples];
        if (samples.Length == 0 || !(windowSeconds > 0)) return [];

        double rate = samples.Length / windowSeconds;
        double step = Steps.FirstOrDefault(s => s >= Math.Max(windowSeconds / maxPoints, 20 / rate), Steps[^1]);
        int fewest = Math.Min(10, maxPoints);
        if (windowSeconds / step < fewest)
        {
            // Too few completions for 20 an interval: ten intervals of fewer say more than a handful of points.
            step = Steps.LastOrDefault(s => s <= windowSeconds / fewest, Steps[0]);
        }
        // The last interval takes the remainder (up to one more step): a sliver would show a rate from a handful of completions.
        int count = Math.Max(1, (int)Math.Floor(windowSeconds / step + 1e-9));
        var buckets = new List<Sample>[count];
        for (int i = 0; i < count; i++) buckets[i] = [];
        foreach (Sample sample in samples)
        {
            double t = (double)(sample.Timestamp - start) / Stopwatch.Frequency;
            // The window's end is the last completion when a run counts requests: it belongs in.
            if (t < 0 || t > windowSeconds) continue;
            buckets[Math.Min(count - 1, (int)(t / step))].Add(sample);
        }

        var points = new List<TimelinePoint>(count);
        for (int i = 0; i < count; i++)
        {
            double from = i * step, to = i == count - 1 ? windowSeconds : (i + 1) * step;
            List<Sample> bucket = buckets[i];
            int[] latencies = bucket.Where(s => s.Images > 0).Select(s => s.LatencyUs).Order().ToArray();
            double seconds = to - from;
            points.Add(new TimelinePoint
            {
                StartS = Math.Round(from, 3),
                EndS = Math.Round(to, 3),
                Ok = latencies.Length,
                Failed = bucket.Count - latencies.Length,
                RequestsPerS = Math.Round(latencies.Length / seconds, 2),
                ImagesPerS = Math.Round(bucket.Sum(s => (long)s.Images) / seconds, 2),
                P50Ms = Percentile(latencies, 50),
                P90Ms = Percentile(latencies, 90),
                P99Ms = Percentile(latencies, 99),
            });
        }
        return points;
    }

    /// <summary>Nearest-rank percentile in milliseconds; null without values.</summary>
    private static double? Percentile(int[] sorted, double percentile)
    {
        if (sorted.Length == 0) return null;
        int rank = Math.Clamp((int)Math.Ceiling(percentile / 100 * sorted.Length) - 1, 0, sorted.Length - 1);
        return Math.Round(sorted[rank] / 1000.0, 3);
    }
}

/// <summary>One interval of a run: completions in [start_s, end_s), seconds after the measurement began.</summary>
public sealed record TimelinePoint
{
    public required double StartS { get; init; }
    public required double EndS { get; init; }

    /// <summary>Requests answered OK and failed in the interval.</summary>
    public required long Ok { get; init; }
    public required long Failed { get; init; }

    public required double RequestsPerS { get; init; }
    public required double ImagesPerS { get; init; }

    /// <summary>Latency of the OK requests completed in the interval (exact, nearest rank); null when none.</summary>
    public double? P50Ms { get; init; }
    public double? P90Ms { get; init; }
    public double? P99Ms { get; init; }
}
