using XRay.LoadTest.Statistics;

namespace XRay.LoadTest.Load;

/// <summary>
/// One load level, as written to report.json (snake_case names; renaming a property here changes the report
/// format, which tests pin). Times in milliseconds unless the name says otherwise.
/// </summary>
public sealed record RunResult
{
    /// <summary>"c=8" (closed loop) or "r=50/s" (open loop).</summary>
    public required string Label { get; init; }

    /// <summary>"closed" or "open".</summary>
    public required string Mode { get; init; }

    /// <summary>"unary" or "stream".</summary>
    public required string Api { get; init; }

    /// <summary>Closed loop: callers in flight; null for open loop.</summary>
    public int? Concurrency { get; init; }

    /// <summary>Open loop: requests per second asked for; null for closed loop.</summary>
    public double? RateRps { get; init; }

    /// <summary>Open loop: "constant" or "poisson"; null for closed loop.</summary>
    public string? Arrival { get; init; }

    public required int Connections { get; init; }

    public required IReadOnlyList<string> Targets { get; init; }

    public required PayloadInfo Payload { get; init; }

    public required double WarmupS { get; init; }

    /// <summary>Length of the measurement window.</summary>
    public required double DurationS { get; init; }

    public required RequestCounts Requests { get; init; }

    /// <summary>Measured requests by final gRPC status (OK, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...).</summary>
    public required IReadOnlyDictionary<string, long> StatusCodes { get; init; }

    public required Throughput Throughput { get; init; }

    /// <summary>Successful requests' latency, client-side.</summary>
    public required LatencySummary LatencyMs { get; init; }

    /// <summary>Open loop: how late requests left against their schedule; null for closed loop.</summary>
    public LatencySummary? ScheduleLagMs { get; init; }

    /// <summary>What the server said about each image (the responses' timing).</summary>
    public required ServerTiming Server { get; init; }

    /// <summary>This load tester's CPU over the window (it shares the machine with the server).</summary>
    public required CpuUsage ClientCpu { get; init; }

    /// <summary>The server's CPU over the window, when this tool started the server; else null.</summary>
    public CpuUsage? ServerCpu { get; init; }

    /// <summary>Stopped early (Ctrl+C): the numbers cover what ran.</summary>
    public bool Interrupted { get; init; }

    /// <summary>The measured window in intervals: throughput and latency over time (empty in reports from before it existed).</summary>
    public IReadOnlyList<TimelinePoint> Timeline { get; init; } = [];
}

public sealed record PayloadInfo
{
    /// <summary>"float32", "uint8" or "png".</summary>
    public required string Kind { get; init; }
    public required int ImagesPerRequest { get; init; }
    public required int Channels { get; init; }
    public required long RequestBytes { get; init; }
    /// <summary>"generated" or "files (N)".</summary>
    public required string Source { get; init; }
}

public sealed record RequestCounts
{
    /// <summary>Measured requests sent.</summary>
    public required long Sent { get; init; }
    public required long Ok { get; init; }
    public required long Failed { get; init; }
    /// <summary>Open loop: arrivals not sent because MaxInFlight requests were outstanding.</summary>
    public required long Dropped { get; init; }
    public required long ImagesOk { get; init; }
    /// <summary>Failed over sent.</summary>
    public required double ErrorRate { get; init; }
}

public sealed record Throughput
{
    /// <summary>Successful requests answered within the window, per second of window.</summary>
    public required double RequestsPerS { get; init; }
    public required double ImagesPerS { get; init; }
    /// <summary>Requests sent per second of window (open loop: the achieved arrival rate).</summary>
    public required double OfferedRps { get; init; }
}

public sealed record ServerTiming
{
    /// <summary>Per image: time queued in the server before its batch started.</summary>
    public required LatencySummary QueueMs { get; init; }
    /// <summary>Per image: forward time of the batch it ran in.</summary>
    public required LatencySummary ComputeMs { get; init; }
    public required BatchSizes BatchSize { get; init; }
    /// <summary>Model time (each image's share of its batch's compute) over the window: near 1 means the model never idled.</summary>
    public required double ModelBusyFraction { get; init; }
}

public sealed record BatchSizes
{
    /// <summary>Mean over batches (estimated from the images: batches = sum of 1/size).</summary>
    public required double Mean { get; init; }
    /// <summary>Mean over images: the batch size a typical image ran in.</summary>
    public required double ImageWeightedMean { get; init; }
    public required int Max { get; init; }
    /// <summary>Images answered, by the size of the batch they ran in ("1": 120, "7": 700, ...).</summary>
    public required IReadOnlyDictionary<string, long> ImagesByBatchSize { get; init; }
}
