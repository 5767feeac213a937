using System.Diagnostics;
using XRay.LoadTest.Statistics;
using XRay.Model;

namespace XRay.LoadTest.Bench;

/// <summary>One batch size of the raw model: forwards back to back, in this process, without gRPC or batcher.</summary>
public sealed record RawPoint
{
    public required int BatchSize { get; init; }
    public required int Iterations { get; init; }
    public required double ImagesPerS { get; init; }
    /// <summary>Time of one forward of the whole batch.</summary>
    public required LatencySummary ForwardMs { get; init; }
}

/// <summary>
/// The limit: the model's throughput at each batch size with nothing around it, through the same
/// <see cref="ModelRunner"/> (one inference thread, inference mode) the server runs it with.
/// </summary>
internal static class RawModelBenchmark
{
    /// <param name="minSeconds">Forwards continue until this long has passed at each batch size...</param>
    /// <param name="minIterations">...and at least this many have run (after two warm-up forwards per size).</param>
    public static async Task<IReadOnlyList<RawPoint>> RunAsync(ModelRunner runner, IReadOnlyList<int> batchSizes, double minSeconds,
        int minIterations, Action<string>? log, CancellationToken cancellationToken)
    {
        var points = new List<RawPoint>();
        var random = new Random(1);
        foreach (int batchSize in batchSizes)
        {
            var input = new float[batchSize * runner.InputLength];
            for (int i = 0; i < input.Length; i++) input[i] = (float)(random.NextDouble() * 4 - 2);

            // The first forward of a shape builds oneDNN primitives: not part of the steady state.
            for (int i = 0; i < 2; i++) await runner.RunAsync(input, batchSize, cancellationToken).ConfigureAwait(false);

            var forwards = new LatencyRecorder();
            long start = Stopwatch.GetTimestamp();
            int iterations = 0;
            while (iterations < minIterations || Stopwatch.GetElapsedTime(start).TotalSeconds < minSeconds)
            {
                long before = Stopwatch.GetTimestamp();
                await runner.RunAsync(input, batchSize, cancellationToken).ConfigureAwait(false);
                forwards.Record((long)Stopwatch.GetElapsedTime(before).TotalMicroseconds);
                iterations++;
            }
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            var point = new RawPoint
            {
                BatchSize = batchSize,
                Iterations = iterations,
                ImagesPerS = Math.Round(batchSize * iterations / seconds, 2),
                ForwardMs = forwards.Summarize(),
            };
            log?.Invoke($"raw batch {batchSize,3}: {point.ImagesPerS,9:F1} img/s, forward p50 {point.ForwardMs.P50:F2} ms ({iterations} forwards)");
            points.Add(point);
        }
        return points;
    }

    /// <summary>
    /// Raw images/s at any batch size: forward time interpolated linearly between the measured sizes
    /// (extrapolated flat in images/s beyond them).
    /// </summary>
    public static double ImagesPerSecondAt(IReadOnlyList<RawPoint> points, double batchSize)
    {
        if (points.Count == 0) throw new ArgumentException("No raw measurements.", nameof(points));
        var sorted = points.OrderBy(p => p.BatchSize).ToArray();
        if (batchSize <= sorted[0].BatchSize) return sorted[0].ImagesPerS;
        if (batchSize >= sorted[^1].BatchSize) return sorted[^1].ImagesPerS;
        for (int i = 1; i < sorted.Length; i++)
        {
            if (batchSize > sorted[i].BatchSize) continue;
            RawPoint lo = sorted[i - 1], hi = sorted[i];
            double tLo = lo.BatchSize / lo.ImagesPerS, tHi = hi.BatchSize / hi.ImagesPerS;
            double f = (batchSize - lo.BatchSize) / (hi.BatchSize - lo.BatchSize);
            return batchSize / (tLo + f * (tHi - tLo));
        }
        return sorted[^1].ImagesPerS;
    }

    /// <summary>
    /// Raw images/s for the mix of batch sizes the server ran: each image costs its batch's raw forward time
    /// divided by the batch size, so this is images / sum over images of 1 / raw_images_per_s(size).
    /// </summary>
    public static double ImagesPerSecondForMix(IReadOnlyList<RawPoint> points, IReadOnlyDictionary<int, long> imagesByBatchSize)
    {
        double images = 0, seconds = 0;
        foreach (var (size, count) in imagesByBatchSize)
        {
            images += count;
            seconds += count / ImagesPerSecondAt(points, size);
        }
        return seconds == 0 ? 0 : images / seconds;
    }
}
