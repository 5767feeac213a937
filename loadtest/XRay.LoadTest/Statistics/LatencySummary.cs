using System.Text.Json.Serialization;

namespace XRay.LoadTest.Statistics;

/// <summary>A latency distribution in milliseconds. Percentiles are HdrHistogram's (within 0.1%); the rest exact.</summary>
public sealed record LatencySummary
{
    public static LatencySummary Empty { get; } = new();

    /// <summary>The percentiles a summary carries.</summary>
    public static IReadOnlyList<double> ReportedPercentiles { get; } = [50, 90, 95, 99, 99.9];

    public long Count { get; init; }
    public double Min { get; init; }
    public double Mean { get; init; }
    public double P50 { get; init; }
    public double P90 { get; init; }
    public double P95 { get; init; }
    public double P99 { get; init; }

    [JsonPropertyName("p99_9")]
    public double P999 { get; init; }

    public double Max { get; init; }

    /// <summary>The named percentile: 50, 90, 95, 99 or 99.9.</summary>
    public double Percentile(double percentile) => percentile switch
    {
        50 => P50,
        90 => P90,
        95 => P95,
        99 => P99,
        99.9 => P999,
        _ => throw new ArgumentOutOfRangeException(nameof(percentile), percentile, "Reported percentiles: 50, 90, 95, 99, 99.9."),
    };
}
