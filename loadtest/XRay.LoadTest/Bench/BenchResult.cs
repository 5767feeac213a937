using XRay.LoadTest.Load;

namespace XRay.LoadTest.Bench;

/// <summary>What `bench` measured in one run: the raw model, the server unbatched and batched, and the ratios between them.</summary>
public sealed record BenchResult
{
    public required ModelSummary Model { get; init; }

    /// <summary>The allocator under the in-process raw measurement (jemalloc, like the server, or glibc malloc).</summary>
    public required string RawAllocator { get; init; }

    /// <summary>Raw in-process throughput per batch size: the limit.</summary>
    public required IReadOnlyList<RawPoint> Raw { get; init; }

    /// <summary>The server with MaxBatchSize=1; null when not measured.</summary>
    public ServedPhase? Unbatched { get; init; }

    /// <summary>The server with dynamic batching; null when not measured.</summary>
    public ServedPhase? Batched { get; init; }

    public required BenchRatios Ratios { get; init; }

    /// <summary>
    /// With several runtimes compared (<c>--compare</c>): each configuration's own bench, measured one after another in
    /// this run, in the order asked; this record's other fields repeat the first. Null for a single configuration.
    /// </summary>
    public IReadOnlyList<BenchResult>? Compared { get; init; }
}

public sealed record ModelSummary
{
    public required string Name { get; init; }
    public required string Version { get; init; }
    public required string Architecture { get; init; }

    /// <summary>torch or onnxruntime; empty in reports written before runtimes were compared.</summary>
    public string Runtime { get; init; } = "";
    public required string Device { get; init; }
    public required string Precision { get; init; }
}

public sealed record ServedPhase
{
    public required string Target { get; init; }

    /// <summary>The server's command line when bench started it; null for a server that was already running.</summary>
    public string? ServerCommand { get; init; }

    /// <summary>What the server said about its allocator at start-up, when bench started it.</summary>
    public string? ServerAllocator { get; init; }

    /// <summary>As the server reported it (GetModelInfo).</summary>
    public required int MaxBatchSize { get; init; }

    /// <summary>The measured run at the bench's concurrency.</summary>
    public required RunResult Run { get; init; }

    /// <summary>Unbatched phase only: one caller at a time, for the served path's latency overhead.</summary>
    public RunResult? ProbeC1 { get; init; }
}

/// <summary>Null where a phase needed for the ratio was not measured.</summary>
public sealed record BenchRatios
{
    /// <summary>Unbatched server images/s over raw images/s at batch 1.</summary>
    public double? UnbatchedOverRawB1 { get; init; }

    /// <summary>Raw images/s for the mix of batch sizes the batched server ran (each image costs its batch's forward / size).</summary>
    public double? BatchedRawEquivalentImagesPerS { get; init; }

    /// <summary>Batched server images/s over <see cref="BatchedRawEquivalentImagesPerS"/>: served over raw at the same batch sizes.</summary>
    public double? BatchedOverRawSameBatchSizes { get; init; }

    /// <summary>The highest raw images/s measured at any batch size: the ceiling for any batching.</summary>
    public double? RawBestImagesPerS { get; init; }

    /// <summary>Batched server images/s over the unbatched server's, same concurrency and payload.</summary>
    public double? BatchedOverUnbatched { get; init; }

    /// <summary>Batched p50 latency over unbatched p50 latency (below 1: batching also cut the latency).</summary>
    public double? BatchedOverUnbatchedP50 { get; init; }

    /// <summary>Raw forward at batch 1, p50.</summary>
    public double? RawB1ForwardP50Ms { get; init; }

    /// <summary>One caller at a time against the unbatched server, p50 (client-side).</summary>
    public double? ServedC1P50Ms { get; init; }

    /// <summary><see cref="ServedC1P50Ms"/> minus <see cref="RawB1ForwardP50Ms"/>: what the served path adds to one forward.</summary>
    public double? OverheadP50Ms { get; init; }

    /// <summary><see cref="OverheadP50Ms"/> over <see cref="RawB1ForwardP50Ms"/>, in percent.</summary>
    public double? OverheadP50Percent { get; init; }

    /// <summary>Part of the overhead inside the server's batcher and model call: its queue p50 + compute p50 minus the raw forward p50.</summary>
    public double? ServerSideOverheadP50Ms { get; init; }
}
