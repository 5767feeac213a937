using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Serialization;
using XRay.LoadTest.Bench;
using XRay.LoadTest.Load;

namespace XRay.LoadTest.Reports;

/// <summary>
/// report.json: the whole outcome of one command. Field names are snake_case and stable (a test pins them);
/// <see cref="FormatVersion"/> changes if a field changes meaning or goes away.
/// </summary>
public sealed record LoadTestReport
{
    public const int CurrentFormatVersion = 1;

    public static JsonSerializerOptions JsonOptions { get; } = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public string Tool { get; init; } = "xray-loadtest";

    public int FormatVersion { get; init; } = CurrentFormatVersion;

    /// <summary>"run", "sweep" or "bench".</summary>
    public required string Kind { get; init; }

    /// <summary>The command line that produced it.</summary>
    public required string Command { get; init; }

    public required DateTimeOffset StartedUtc { get; init; }

    public MachineInfo Machine { get; init; } = MachineInfo.Current();

    /// <summary>The served model (GetModelInfo) for run and sweep; bench has its own.</summary>
    public ServedModelInfo? Model { get; init; }

    /// <summary>run: one; sweep: one per level measured, in order.</summary>
    public IReadOnlyList<RunResult> Runs { get; init; } = [];

    public SweepOutcome? Sweep { get; init; }

    public BenchResult? Bench { get; init; }

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    public static LoadTestReport FromJson(string json) => JsonSerializer.Deserialize<LoadTestReport>(json, JsonOptions)
        ?? throw new JsonException("empty report");
}

public sealed record MachineInfo
{
    public required int ProcessorCount { get; init; }
    public required string Os { get; init; }
    public required string Runtime { get; init; }

    /// <summary>/proc/loadavg's 1-minute figure when the command started (null elsewhere): other work on the machine skews results.</summary>
    public double? LoadAverage1m { get; init; }

    public static MachineInfo Current() => new()
    {
        ProcessorCount = Environment.ProcessorCount,
        Os = RuntimeInformation.OSDescription,
        Runtime = RuntimeInformation.FrameworkDescription,
        LoadAverage1m = ReadLoadAverage(),
    };

    private static double? ReadLoadAverage()
    {
        try
        {
            string text = File.ReadAllText("/proc/loadavg");
            return double.Parse(text.Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }
}

public sealed record ServedModelInfo
{
    public required string Name { get; init; }
    public required string Version { get; init; }
    public required string Architecture { get; init; }
    public required string Device { get; init; }
    public required string Precision { get; init; }
    public required int MaxBatchSize { get; init; }
    public required long MaxQueueDelayUs { get; init; }
    public required int ModelInstances { get; init; }
}

/// <summary>How a sweep ended.</summary>
public sealed record SweepOutcome
{
    /// <summary>"concurrency" or "rate".</summary>
    public required string Over { get; init; }
    public required IReadOnlyList<double> Levels { get; init; }
    /// <summary>The latency percentile the threshold applies to (e.g. 99).</summary>
    public required double SloPercentile { get; init; }
    public required double SloMs { get; init; }
    public required double MaxErrorRate { get; init; }
    /// <summary>The level at which the sweep stopped early, or null when every level ran.</summary>
    public double? StoppedAt { get; init; }
    public string? StopReason { get; init; }
    /// <summary>The highest-throughput level within the threshold, or null when none was.</summary>
    public string? BestWithinSlo { get; init; }
}
