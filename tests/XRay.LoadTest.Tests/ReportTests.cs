using System.Text.Json;
using XRay.LoadTest.Bench;
using XRay.LoadTest.Load;
using XRay.LoadTest.Reports;
using XRay.LoadTest.Statistics;

namespace XRay.LoadTest.Tests;

public sealed class ReportTests
{
    [Fact]
    public void ReportJson_FieldNames_AreStable()
    {
        LoadTestReport report = Samples.Report(Samples.Run(concurrency: 4, p99: 12), bench: Samples.Bench());

        using JsonDocument json = JsonDocument.Parse(report.ToJson());
        JsonElement root = json.RootElement;
        JsonElement run = root.GetProperty("runs")[0];
        JsonElement bench = root.GetProperty("bench");

        // Consumers (dashboards, CI comparisons) read these names: changing one is a format change.
        Assert.Equal(["tool", "format_version", "kind", "command", "started_utc", "machine", "model", "runs", "sweep", "bench"], Names(root));
        Assert.Equal(["label", "mode", "api", "concurrency", "rate_rps", "arrival", "connections", "targets", "payload", "warmup_s", "duration_s",
            "requests", "status_codes", "throughput", "latency_ms", "schedule_lag_ms", "server", "client_cpu", "server_cpu", "interrupted", "timeline"], Names(run));
        Assert.Equal(["count", "min", "mean", "p50", "p90", "p95", "p99", "p99_9", "max"], Names(run.GetProperty("latency_ms")));
        Assert.Equal(["requests_per_s", "images_per_s", "offered_rps"], Names(run.GetProperty("throughput")));
        Assert.Equal(["sent", "ok", "failed", "dropped", "images_ok", "error_rate"], Names(run.GetProperty("requests")));
        Assert.Equal(["queue_ms", "compute_ms", "batch_size", "model_busy_fraction"], Names(run.GetProperty("server")));
        Assert.Equal(["mean", "image_weighted_mean", "max", "images_by_batch_size"], Names(run.GetProperty("server").GetProperty("batch_size")));
        Assert.Equal(["cpu_seconds", "cores_used", "percent_of_machine"], Names(run.GetProperty("client_cpu")));
        Assert.Equal(["model", "raw_allocator", "raw", "unbatched", "batched", "ratios", "compared"], Names(bench));
        Assert.Equal(["batch_size", "iterations", "images_per_s", "forward_ms"], Names(bench.GetProperty("raw")[0]));
        Assert.Equal(["unbatched_over_raw_b1", "batched_raw_equivalent_images_per_s", "batched_over_raw_same_batch_sizes", "raw_best_images_per_s",
            "batched_over_unbatched", "batched_over_unbatched_p50", "raw_b1_forward_p50_ms", "served_c1_p50_ms", "overhead_p50_ms",
            "overhead_p50_percent", "server_side_overhead_p50_ms"], Names(bench.GetProperty("ratios")));
        Assert.Equal(100, run.GetProperty("status_codes").GetProperty("OK").GetInt64());
    }

    [Fact]
    public void ReportJson_RoundTrips()
    {
        LoadTestReport report = Samples.Report(Samples.Run(concurrency: 4, p99: 12), bench: Samples.Bench());

        LoadTestReport back = LoadTestReport.FromJson(report.ToJson());

        Assert.Equal(report.Runs[0].LatencyMs, back.Runs[0].LatencyMs);
        Assert.Equal(report.Bench!.Ratios, back.Bench!.Ratios);
        Assert.Equal(report.ToJson(), back.ToJson());
    }

    [Fact]
    public void BenchRatios_FromPhases_ComparesServedWithRawAtTheSameBatchSizes()
    {
        BenchResult bench = Samples.Bench();
        BenchRatios r = bench.Ratios;

        // Unbatched served 80 img/s against raw 100 at batch 1.
        Assert.Equal(0.8, r.UnbatchedOverRawB1);
        // Batched ran all images at batch 4, where raw does 200 img/s; it served 150.
        Assert.Equal(200, r.BatchedRawEquivalentImagesPerS);
        Assert.Equal(0.75, r.BatchedOverRawSameBatchSizes);
        Assert.Equal(1.875, r.BatchedOverUnbatched);
        // One caller: served p50 12 ms over a 10 ms raw forward; the server's queue + compute p50 is 10.5 ms.
        Assert.Equal(2, r.OverheadP50Ms);
        Assert.Equal(20, r.OverheadP50Percent);
        Assert.Equal(0.5, r.ServerSideOverheadP50Ms);
    }

    [Fact]
    public void Markdown_ShowsOneRowPerLevelAndTheRatios()
    {
        LoadTestReport report = Samples.Report(Samples.Run(concurrency: 4, p99: 12), bench: Samples.Bench());

        string markdown = MarkdownReport.Render(report);

        Assert.Contains("| c=4 | 100 | 100 |", markdown);
        Assert.Contains("| p50 overhead, served over raw batch 1 | +2 ms (20.0%)", markdown);
        Assert.Contains("| (c) MaxBatchSize=4 |", markdown);
        Assert.Contains("| 4 | 200 |", markdown); // raw table row
    }

    [Fact]
    public void Plots_AreWrittenAsPngFiles()
    {
        string directory = Directory.CreateTempSubdirectory("xray-plots").FullName;
        try
        {
            LoadTestReport report = Samples.Report(Samples.Run(concurrency: 1, p99: 5), Samples.Run(concurrency: 4, p99: 12)) with { Bench = Samples.Bench() };

            IReadOnlyList<string> plots = PlotReport.Write(report, directory);

            Assert.Equal(["latency.png", "throughput.png", "bench.png"], plots.Select(Path.GetFileName));
            Assert.All(plots, path => Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(path)[..4]));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task Sweep_StopsAtTheFirstLevelOverTheThreshold()
    {
        var levelsRun = new List<double>();

        SweepResult sweep = await Sweeper.RunAsync([1, 2, 4, 8, 16], level => new LoadProfile { Concurrency = (int)level },
            profile =>
            {
                levelsRun.Add(profile.Concurrency);
                return Task.FromResult(Samples.Run(profile.Concurrency, p99: profile.Concurrency * 10, imagesPerSecond: 50 * profile.Concurrency));
            },
            sloPercentile: 99, sloMs: 50, maxErrorRate: 0.01, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));

        Assert.Equal([1, 2, 4, 8], levelsRun);
        Assert.Equal(8, sweep.Outcome.StoppedAt);
        Assert.Contains("p99 80 ms > 50 ms", sweep.Outcome.StopReason);
        Assert.StartsWith("c=4:", sweep.Outcome.BestWithinSlo);
    }

    private static string[] Names(JsonElement element) => element.EnumerateObject().Select(p => p.Name).ToArray();
}

/// <summary>Hand-made results with round numbers, so expected ratios can be worked out by hand.</summary>
internal static class Samples
{
    public static RunResult Run(int concurrency, double p99, double imagesPerSecond = 100, double p50 = 8, int batch = 1) => new()
    {
        Label = $"c={concurrency}",
        Mode = "closed",
        Api = "unary",
        Concurrency = concurrency,
        Connections = 1,
        Targets = ["http://127.0.0.1:5051"],
        Payload = new PayloadInfo { Kind = "float32", ImagesPerRequest = 1, Channels = 1, RequestBytes = 200_721, Source = "generated" },
        WarmupS = 1,
        DurationS = 10,
        Requests = new RequestCounts { Sent = 100, Ok = 100, Failed = 0, Dropped = 0, ImagesOk = 100, ErrorRate = 0 },
        StatusCodes = new SortedDictionary<string, long> { ["OK"] = 100 },
        Throughput = new Throughput { RequestsPerS = imagesPerSecond, ImagesPerS = imagesPerSecond, OfferedRps = imagesPerSecond },
        LatencyMs = new LatencySummary { Count = 100, Min = 1, Mean = p50, P50 = p50, P90 = p99, P95 = p99, P99 = p99, P999 = p99, Max = p99 },
        Server = new ServerTiming
        {
            QueueMs = new LatencySummary { Count = 100, P50 = 0.5 },
            ComputeMs = new LatencySummary { Count = 100, P50 = 10 },
            BatchSize = new BatchSizes { Mean = batch, ImageWeightedMean = batch, Max = batch, ImagesByBatchSize = new Dictionary<string, long> { [$"{batch}"] = 100 } },
            ModelBusyFraction = 0.9,
        },
        ClientCpu = new CpuUsage { CpuSeconds = 1, CoresUsed = 0.1, PercentOfMachine = 5 },
    };

    public static BenchResult Bench()
    {
        RawPoint[] raw =
        [
            new() { BatchSize = 1, Iterations = 100, ImagesPerS = 100, ForwardMs = new LatencySummary { Count = 100, P50 = 10 } },
            new() { BatchSize = 4, Iterations = 100, ImagesPerS = 200, ForwardMs = new LatencySummary { Count = 100, P50 = 20 } },
        ];
        var unbatched = new ServedPhase { Target = "http://127.0.0.1:1", MaxBatchSize = 1, Run = Run(32, 400, imagesPerSecond: 80, p50: 390), ProbeC1 = Run(1, 15, p50: 12) };
        var batched = new ServedPhase { Target = "http://127.0.0.1:2", MaxBatchSize = 4, Run = Run(32, 250, imagesPerSecond: 150, p50: 200, batch: 4) };
        return new BenchResult
        {
            Model = new ModelSummary { Name = "m", Version = "1", Architecture = "small_cnn", Device = "cpu", Precision = "fp32" },
            RawAllocator = "jemalloc",
            Raw = raw,
            Unbatched = unbatched,
            Batched = batched,
            Ratios = BenchRunner.Ratios(raw, unbatched, batched),
        };
    }

    public static LoadTestReport Report(params RunResult[] runs) => new()
    {
        Kind = "run",
        Command = "xray-loadtest run",
        StartedUtc = new DateTimeOffset(2025, 1, 1, 0, 0, 0, TimeSpan.Zero),
        Model = new ServedModelInfo { Name = "m", Version = "1", Architecture = "small_cnn", Device = "cpu", Precision = "fp32", MaxBatchSize = 32, MaxQueueDelayUs = 0, ModelInstances = 1 },
        Runs = runs,
    };

    public static LoadTestReport Report(RunResult run, BenchResult bench) => Report(run) with { Bench = bench };
}
