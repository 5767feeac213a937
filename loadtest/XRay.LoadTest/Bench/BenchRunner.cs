using XRay.Client;
using XRay.Contracts.V1;
using XRay.LoadTest.Load;
using XRay.LoadTest.Payloads;

namespace XRay.LoadTest.Bench;

/// <summary>What `bench` runs. Defaults documented per property.</summary>
public sealed record BenchOptions
{
    /// <summary>Checkpoint folder, served and measured raw; null (default): the server's built-in default model.</summary>
    public string? ModelPath { get; init; }

    /// <summary>
    /// Instead of a checkpoint: an untrained network of this architecture (e.g. densenet121) with random weights,
    /// saved to a temporary checkpoint for the servers (speed does not depend on the weights). Null: not used.
    /// </summary>
    public string? Architecture { get; init; }

    /// <summary>auto (default), cpu or cuda: for the raw run and the servers started.</summary>
    public string Device { get; init; } = "auto";

    /// <summary>fp32 (default) or bf16.</summary>
    public string Precision { get; init; } = "fp32";

    /// <summary>auto (default: as the server picks), torch or onnxruntime: for the raw run and the servers started.</summary>
    public string Runtime { get; init; } = "auto";

    /// <summary>
    /// Runtime and precision pairs to measure side by side in this run (each a whole bench: raw, unbatched, batched),
    /// e.g. onnxruntime/fp32, torch/fp32, torch/bf16; empty (default): only <see cref="Runtime"/> and <see cref="Precision"/>.
    /// </summary>
    public IReadOnlyList<(string Runtime, string Precision)> Compare { get; init; } = [];

    /// <summary>Raw batch sizes (default 1, 2, 4, 8, 16, 32).</summary>
    public IReadOnlyList<int> RawBatchSizes { get; init; } = [1, 2, 4, 8, 16, 32];

    /// <summary>Seconds of forwards per raw batch size, at least (default 3).</summary>
    public double RawSeconds { get; init; } = 3;

    /// <summary>Forwards per raw batch size, at least (default 3).</summary>
    public int RawIterations { get; init; } = 3;

    /// <summary>MaxBatchSize of the batched server this tool starts (default 32, the server's default).</summary>
    public int MaxBatchSize { get; init; } = 32;

    /// <summary>The load on both servers: closed loop at the same concurrency (default 32), payload and API.</summary>
    public LoadProfile Load { get; init; } = new() { Concurrency = 32, Duration = TimeSpan.FromSeconds(15), Warmup = TimeSpan.FromSeconds(5) };

    /// <summary>Length of the one-caller latency probe against the unbatched server (default 5 s; 0 skips it).</summary>
    public TimeSpan ProbeDuration { get; init; } = TimeSpan.FromSeconds(5);

    public PayloadSpec Payload { get; init; } = new();

    /// <summary>xray-server binary; null (default): the one built in this repository.</summary>
    public string? ServerPath { get; init; }

    /// <summary>xray-train binary, which measures the raw model (it carries libtorch; this tool does not); null (default): the one built in this repository.</summary>
    public string? TrainPath { get; init; }

    /// <summary>More arguments for the servers started (e.g. --max-queue-delay-us 2000).</summary>
    public IReadOnlyList<string> ServerArguments { get; init; } = [];

    /// <summary>An already running server with MaxBatchSize=1, instead of starting one.</summary>
    public string? UnbatchedTarget { get; init; }

    /// <summary>An already running batching server, instead of starting one.</summary>
    public string? BatchedTarget { get; init; }

    /// <summary>Measure only the servers given as targets (no server is started for a missing one).</summary>
    public bool TargetsOnly { get; init; }

    /// <summary>How long a started server may take to load, warm up and report SERVING (default 300 s).</summary>
    public TimeSpan ServerReadyTimeout { get; init; } = TimeSpan.FromSeconds(300);
}

/// <summary>
/// `bench`, in one run: (a) the model's raw throughput per batch size in this process (the limit), (b) the
/// server with MaxBatchSize=1 and (c) with dynamic batching, at the same concurrency and payload; then the
/// ratios. Phases run one after another, never overlapping, since all share this machine's cores.
/// </summary>
public sealed class BenchRunner(BenchOptions benchOptions, IRunPresenter presenter)
{
    public async Task<BenchResult> RunAsync(CancellationToken cancellationToken)
    {
        BenchOptions options = benchOptions;
        if (options.Load.Mode != LoadMode.Closed) throw new ArgumentException("bench compares servers at the same concurrency: closed loop only.");
        options.Load.Validate();
        options.Payload.Validate();
        // An untrained network: xray-train saves it here first, and both servers load the same checkpoint.
        string? randomModel = options.Architecture is not null && options.ModelPath is null
            ? Directory.CreateTempSubdirectory("xray-bench-model").FullName
            : null;
        try
        {
            if (options.Compare.Count == 0)
            {
                return await RunAsync(options, randomModel, cancellationToken).ConfigureAwait(false);
            }

            var results = new List<BenchResult>();
            foreach (var (runtime, precision) in options.Compare)
            {
                presenter.Log($"=== {runtime} {precision} ===");
                // The random-weight checkpoint is saved by the first raw run and served by every configuration.
                BenchOptions configuration = options with { Runtime = runtime, Precision = precision };
                if (results.Count > 0 && randomModel is not null) configuration = configuration with { ModelPath = randomModel, Architecture = null };
                results.Add(await RunAsync(configuration, results.Count == 0 ? randomModel : null, cancellationToken).ConfigureAwait(false));
            }
            return results[0] with { Compared = results };
        }
        finally
        {
            if (randomModel is not null) Directory.Delete(randomModel, recursive: true);
        }
    }

    private async Task<BenchResult> RunAsync(BenchOptions options, string? randomModel, CancellationToken cancellationToken)
    {
        string train = options.TrainPath ?? ToolProcess.FindBuilt(Path.Combine("model", "XRay.Train"), "xray-train")
            ?? throw new FileNotFoundException("no xray-train binary found (it measures the raw model): build model/XRay.Train, or pass --train-path");

        // (a) Raw, first: nothing else is running yet.
        presenter.Log($"(a) raw model ({train} raw-benchmark), batch sizes {string.Join(",", options.RawBatchSizes)} ...");
        RawRun first = await RawModelBenchmark.RunAsync(train,
            RawModelBenchmark.Arguments(options.ModelPath, randomModel is null ? null : options.Architecture, randomModel, options.Runtime, options.Device, options.Precision,
                options.RawBatchSizes, options.RawSeconds, options.RawIterations),
            presenter.Log, cancellationToken).ConfigureAwait(false);
        if (randomModel is not null) options = options with { ModelPath = randomModel };
        var raw = new List<RawPoint>(first.Points);
        var payloads = PayloadPool.Create(options.Payload, first.Preprocessing);

        // (b) and (c): the same load on each server.
        ServedPhase? unbatched = null, batched = null;
        if (options.UnbatchedTarget is not null || !options.TargetsOnly)
        {
            unbatched = await ServePhaseAsync(options, "(b) unbatched", options.UnbatchedTarget, ["--max-batch-size", "1"], payloads, probe: true, cancellationToken).ConfigureAwait(false);
        }
        if (options.BatchedTarget is not null || !options.TargetsOnly)
        {
            batched = await ServePhaseAsync(options, "(c) batched", options.BatchedTarget, ["--max-batch-size", options.MaxBatchSize.ToString(System.Globalization.CultureInfo.InvariantCulture)], payloads, probe: false, cancellationToken).ConfigureAwait(false);
        }

        // (a, continued) Speed is not smooth in the batch size (oneDNN picks kernels per shape), so interpolating
        // between powers of two can be far off: measure the sizes the batched server actually ran, too.
        int[] observed = batched is null ? [] : BatchSizesToMeasure(batched.Run.Server.BatchSize.ImagesByBatchSize, raw.Select(p => p.BatchSize).ToHashSet());
        if (observed.Length > 0)
        {
            presenter.Log($"(a) raw model at the batch sizes the batched server ran: {string.Join(",", observed)} ...");
            RawRun more = await RawModelBenchmark.RunAsync(train,
                RawModelBenchmark.Arguments(options.ModelPath, null, null, options.Runtime, options.Device, options.Precision, observed, Math.Max(1, options.RawSeconds / 2), options.RawIterations),
                presenter.Log, cancellationToken).ConfigureAwait(false);
            raw.AddRange(more.Points);
            raw.Sort((a, b) => a.BatchSize.CompareTo(b.BatchSize));
        }

        return new BenchResult
        {
            Model = first.Model,
            RawAllocator = first.Allocator,
            Raw = raw,
            Unbatched = unbatched,
            Batched = batched,
            Ratios = Ratios(raw, unbatched, batched),
        };
    }

    /// <summary>The unmeasured batch sizes that together ran 95% of the images, most images first; 16 at most.</summary>
    internal static int[] BatchSizesToMeasure(IReadOnlyDictionary<string, long> imagesByBatchSize, IReadOnlySet<int> measured)
    {
        long total = imagesByBatchSize.Values.Sum(), covered = 0;
        var sizes = new List<int>();
        foreach (var (size, images) in imagesByBatchSize
            .Select(pair => (Size: int.Parse(pair.Key, System.Globalization.CultureInfo.InvariantCulture), Images: pair.Value))
            .OrderByDescending(pair => pair.Images).ThenBy(pair => pair.Size))
        {
            if (covered >= 0.95 * total || sizes.Count == 16) break;
            covered += images;
            if (!measured.Contains(size)) sizes.Add(size);
        }
        sizes.Sort();
        return sizes.ToArray();
    }

    private async Task<ServedPhase> ServePhaseAsync(BenchOptions options, string title, string? target, string[] batchingArguments, PayloadPool payloads, bool probe, CancellationToken cancellationToken)
    {
        ServerProcess? server = null;
        try
        {
            if (target is null)
            {
                string path = options.ServerPath ?? ServerProcess.FindServerBinary()
                    ?? throw new FileNotFoundException("no xray-server binary found: build server/XRay.Server, or pass --server-path");
                string[] arguments =
                [
                    .. batchingArguments,
                    "--runtime", options.Runtime,
                    "--device", options.Device,
                    "--precision", options.Precision,
                    .. string.IsNullOrEmpty(options.ModelPath) ? Array.Empty<string>() : ["--model", Path.GetFullPath(options.ModelPath)],
                    .. options.ServerArguments,
                ];
                presenter.Log($"{title}: starting {path} {string.Join(' ', arguments)} ...");
                server = await ServerProcess.StartAsync(path, arguments, options.ServerReadyTimeout, cancellationToken).ConfigureAwait(false);
                target = server.Address;
                presenter.Log($"{title}: serving on {target} (allocator: {server.Allocator ?? "not reported"})");
            }

            ModelInfo info;
            using (var client = new XRayClassifierClient(target, new XRayClientOptions { MaxAttempts = 1, Timeout = TimeSpan.FromSeconds(30) }))
            {
                info = await client.GetModelInfoAsync(cancellationToken).ConfigureAwait(false);
            }

            RunResult? probeRun = null;
            if (probe && options.ProbeDuration > TimeSpan.Zero)
            {
                var probeProfile = options.Load with { Concurrency = 1, Duration = options.ProbeDuration, Warmup = TimeSpan.FromSeconds(Math.Min(2, options.Load.Warmup.TotalSeconds)), Requests = null };
                probeRun = await presenter.RunAsync(new LoadRunner([target], probeProfile, payloads, server?.Process), $"{title}, one caller", cancellationToken).ConfigureAwait(false);
            }
            RunResult run = await presenter.RunAsync(new LoadRunner([target], options.Load, payloads, server?.Process), title, cancellationToken).ConfigureAwait(false);
            return new ServedPhase
            {
                Target = target,
                ServerCommand = server?.Arguments,
                ServerAllocator = server?.Allocator,
                MaxBatchSize = info.Batching.MaxBatchSize,
                Run = run,
                ProbeC1 = probeRun,
            };
        }
        finally
        {
            if (server is not null) await server.DisposeAsync().ConfigureAwait(false);
        }
    }

    internal static BenchRatios Ratios(IReadOnlyList<RawPoint> raw, ServedPhase? unbatched, ServedPhase? batched)
    {
        static double? Ratio(double? a, double? b) => a is { } x && b is { } y && y > 0 ? Math.Round(x / y, 3) : null;
        RawPoint? b1 = raw.FirstOrDefault(p => p.BatchSize == 1);
        double? rawB1 = b1?.ImagesPerS;
        double? rawEquivalent = null;
        if (batched is not null && raw.Count > 0)
        {
            var mix = batched.Run.Server.BatchSize.ImagesByBatchSize.ToDictionary(pair => int.Parse(pair.Key, System.Globalization.CultureInfo.InvariantCulture), pair => pair.Value);
            rawEquivalent = mix.Count == 0 ? null : Math.Round(RawModelBenchmark.ImagesPerSecondForMix(raw, mix), 2);
        }
        double? rawForward = b1?.ForwardMs.P50;
        RunResult? probe = unbatched?.ProbeC1;
        double? served = probe?.LatencyMs.Count > 0 ? probe.LatencyMs.P50 : null;
        double? overhead = served is { } s && rawForward is { } r ? Math.Round(s - r, 3) : null;
        double? serverSide = probe is { Server.ComputeMs.Count: > 0 } && rawForward is { } rf
            ? Math.Round(probe.Server.QueueMs.P50 + probe.Server.ComputeMs.P50 - rf, 3)
            : null;
        return new BenchRatios
        {
            UnbatchedOverRawB1 = Ratio(unbatched?.Run.Throughput.ImagesPerS, rawB1),
            BatchedRawEquivalentImagesPerS = rawEquivalent,
            BatchedOverRawSameBatchSizes = Ratio(batched?.Run.Throughput.ImagesPerS, rawEquivalent),
            RawBestImagesPerS = raw.Count == 0 ? null : raw.Max(p => p.ImagesPerS),
            BatchedOverUnbatched = Ratio(batched?.Run.Throughput.ImagesPerS, unbatched?.Run.Throughput.ImagesPerS),
            BatchedOverUnbatchedP50 = Ratio(batched?.Run.LatencyMs.P50, unbatched?.Run.LatencyMs.P50),
            RawB1ForwardP50Ms = rawForward,
            ServedC1P50Ms = served,
            OverheadP50Ms = overhead,
            OverheadP50Percent = Ratio(overhead * 100, rawForward),
            ServerSideOverheadP50Ms = serverSide,
        };
    }
}
