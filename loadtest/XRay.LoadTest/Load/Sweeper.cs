using XRay.LoadTest.Reports;

namespace XRay.LoadTest.Load;

public sealed record SweepResult(IReadOnlyList<RunResult> Runs, SweepOutcome Outcome);

/// <summary>
/// Runs load levels in order and stops after the first whose latency percentile exceeds the threshold or whose
/// error rate is too high (that level is still reported: it shows where the knee is).
/// </summary>
public static class Sweeper
{
    public static async Task<SweepResult> RunAsync(IReadOnlyList<double> levels, Func<double, LoadProfile> profileAt,
        Func<LoadProfile, Task<RunResult>> run, double sloPercentile, double sloMs, double maxErrorRate, CancellationToken cancellationToken)
    {
        var runs = new List<RunResult>();
        double? stoppedAt = null;
        string? reason = null;
        foreach (double level in levels)
        {
            cancellationToken.ThrowIfCancellationRequested();
            RunResult result = await run(profileAt(level)).ConfigureAwait(false);
            runs.Add(result);
            if (result.Interrupted) break;
            reason = StopReason(result, sloPercentile, sloMs, maxErrorRate);
            if (reason is not null)
            {
                stoppedAt = level;
                break;
            }
        }
        RunResult? best = runs.Where(r => StopReason(r, sloPercentile, sloMs, maxErrorRate) is null)
            .MaxBy(r => r.Throughput.ImagesPerS);
        var outcome = new SweepOutcome
        {
            Over = "",
            Levels = levels,
            SloPercentile = sloPercentile,
            SloMs = sloMs,
            MaxErrorRate = maxErrorRate,
            StoppedAt = stoppedAt,
            StopReason = reason,
            BestWithinSlo = best is null ? null : $"{best.Label}: {best.Throughput.ImagesPerS:0.#} img/s, p{sloPercentile:0.#} {best.LatencyMs.Percentile(sloPercentile):0.##} ms",
        };
        return new SweepResult(runs, outcome);
    }

    /// <summary>Null when the run is within the threshold.</summary>
    public static string? StopReason(RunResult run, double sloPercentile, double sloMs, double maxErrorRate)
    {
        if (run.Requests.Ok == 0) return "no successful request";
        double errorRate = run.Requests.Sent == 0 ? 0 : (double)(run.Requests.Failed + run.Requests.Dropped) / run.Requests.Sent;
        if (errorRate > maxErrorRate) return $"error rate {errorRate:P1} > {maxErrorRate:P1}";
        double latency = run.LatencyMs.Percentile(sloPercentile);
        return latency > sloMs ? $"p{sloPercentile:0.#} {latency:0.##} ms > {sloMs:0.##} ms" : null;
    }
}
