using System.Net.Sockets;
using System.Text.Json;
using XRay.Client;
using XRay.LoadTest.Load;
using XRay.LoadTest.Payloads;
using XRay.Server.Tests.Infrastructure;

namespace XRay.LoadTest.Tests;

/// <summary>Short, bounded runs against the real server on 127.0.0.1 (in this process, the real default model unless stated).</summary>
public sealed class EndToEndTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task ClosedLoop_RequestCount_RecordsEveryRequestWithTheServersTiming()
    {
        await using var server = await TestServer.StartAsync();
        var profile = new LoadProfile { Concurrency = 4, Requests = 40, Warmup = TimeSpan.Zero };

        RunResult result = await new LoadRunner([server.Address], profile, Pool(PayloadKind.Float32)).RunAsync().WaitAsync(Bound);

        Assert.Equal(40, result.Requests.Sent);
        Assert.Equal(40, result.Requests.Ok);
        Assert.Equal(new Dictionary<string, long> { ["OK"] = 40 }, result.StatusCodes);
        Assert.Equal(40, result.LatencyMs.Count);
        Assert.True(result.LatencyMs.Min > 0 && result.LatencyMs.Min <= result.LatencyMs.P50 && result.LatencyMs.P50 <= result.LatencyMs.P99 && result.LatencyMs.P99 <= result.LatencyMs.Max);
        Assert.True(result.Throughput.ImagesPerS > 0);
        Assert.Equal(40, result.Server.ComputeMs.Count);
        Assert.Equal(40, result.Server.BatchSize.ImagesByBatchSize.Values.Sum());
        Assert.InRange(result.Server.BatchSize.Max, 1, 4); // four callers: never more than four images queued
        Assert.True(result.ClientCpu.CpuSeconds > 0);
    }

    [Fact]
    public async Task OpenLoop_ConstantRate_SendsOnScheduleForTheDuration()
    {
        await using var server = await TestServer.StartAsync();
        var profile = new LoadProfile
        {
            Mode = LoadMode.Open,
            RateRps = 20,
            Arrival = ArrivalKind.Constant,
            Warmup = TimeSpan.FromSeconds(0.5),
            Duration = TimeSpan.FromSeconds(2),
        };

        RunResult result = await new LoadRunner([server.Address], profile, Pool(PayloadKind.UInt8)).RunAsync().WaitAsync(Bound);

        // Arrivals at 0.05 s steps; those scheduled in [0.5 s, 2.5 s) are measured: 40 of them, whatever the server does.
        Assert.InRange(result.Requests.Sent, 39, 41);
        Assert.Equal(result.Requests.Sent, result.Requests.Ok);
        Assert.Equal(20, result.RateRps);
        Assert.Equal("constant", result.Arrival);
        Assert.NotNull(result.ScheduleLagMs);
        Assert.InRange(result.Throughput.OfferedRps, 19, 21);
    }

    [Fact]
    public async Task OpenLoop_Poisson_StreamApi_ReachesTheRateWithinTolerance()
    {
        await using var server = await TestServer.StartAsync();
        var profile = new LoadProfile
        {
            Mode = LoadMode.Open,
            RateRps = 40,
            Arrival = ArrivalKind.Poisson,
            Api = CallApi.Stream,
            Connections = 2,
            Warmup = TimeSpan.Zero,
            Duration = TimeSpan.FromSeconds(3),
            Seed = 3,
        };

        RunResult result = await new LoadRunner([server.Address], profile, Pool(PayloadKind.Png)).RunAsync().WaitAsync(Bound);

        // 120 expected; a Poisson count has standard deviation sqrt(120) = 11.
        Assert.InRange(result.Requests.Sent, 85, 155);
        Assert.True(result.Requests.Sent == result.Requests.Ok, $"{result.Requests.Ok} of {result.Requests.Sent} OK; status codes: {string.Join(", ", result.StatusCodes)}");
        Assert.Equal("stream", result.Api);
    }

    [Fact]
    public async Task UnreachableServer_FailuresAreCountedByStatusNotThrown()
    {
        var profile = new LoadProfile { Concurrency = 2, Requests = 6, Warmup = TimeSpan.Zero, Timeout = TimeSpan.FromSeconds(5) };

        RunResult result = await new LoadRunner(["http://127.0.0.1:1"], profile, Pool(PayloadKind.Float32)).RunAsync().WaitAsync(Bound);

        Assert.Equal(0, result.Requests.Ok);
        Assert.Equal(6, result.Requests.Failed);
        Assert.Equal(new Dictionary<string, long> { ["UNAVAILABLE"] = 6 }, result.StatusCodes);
        Assert.Equal(1.0, result.Requests.ErrorRate);
    }

    [Fact]
    public async Task Client_SeveralAddresses_SpreadsCallsRoundRobin()
    {
        var first = new FakeModelBackend();
        var second = new FakeModelBackend();
        await using var a = await TestServer.StartAsync(new FakeModelBackendFactory(first));
        await using var b = await TestServer.StartAsync(new FakeModelBackendFactory(second));
        using var client = new XRayClassifierClient([a.Address, b.Address], new XRayClientOptions { Timeout = TimeSpan.FromSeconds(30) });
        var image = new float[3 * 224 * 224];

        // round_robin uses the servers it is connected to: until both connections are up, calls may all go to one.
        for (int i = 0; i < 500 && (first.ImagesComputed == 0 || second.ImagesComputed == 0); i++)
        {
            await client.ClassifyTensorAsync(image, [3, 224, 224]).WaitAsync(Bound);
        }
        (int firstBefore, int secondBefore) = (first.ImagesComputed, second.ImagesComputed);
        for (int i = 0; i < 20; i++)
        {
            await client.ClassifyTensorAsync(image, [3, 224, 224]).WaitAsync(Bound);
        }

        Assert.True(firstBefore > 0 && secondBefore > 0, $"one server never got a call: {firstBefore}, {secondBefore}");
        // Both connected: calls alternate.
        Assert.Equal(10, first.ImagesComputed - firstBefore);
        Assert.Equal(10, second.ImagesComputed - secondBefore);
    }

    [Fact]
    public async Task Client_SeveralAddressesOneDown_CallsStillSucceed()
    {
        var backend = new FakeModelBackend();
        await using var up = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        using var client = new XRayClassifierClient([up.Address, "http://127.0.0.1:1"], new XRayClientOptions { Timeout = TimeSpan.FromSeconds(30) });

        for (int i = 0; i < 6; i++)
        {
            await client.ClassifyTensorAsync(new float[3 * 224 * 224], [3, 224, 224]).WaitAsync(Bound);
        }

        Assert.Equal(6, backend.ImagesComputed);
    }

    [Fact]
    public async Task Cli_Run_WritesJsonMarkdownAndPlots()
    {
        await using var server = await TestServer.StartAsync();
        string directory = Directory.CreateTempSubdirectory("xray-loadtest").FullName;
        try
        {
            var output = new StringWriter();
            var error = new StringWriter();

            int exit = await LoadTestApp.RunAsync(
                ["run", "--target", server.Address, "--requests", "12", "--concurrency", "3", "--warmup", "0", "--payload", "uint8", "--out", directory],
                output, error).WaitAsync(Bound);

            Assert.True(exit == 0, error.ToString());
            using JsonDocument report = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "report.json")));
            Assert.Equal("run", report.RootElement.GetProperty("kind").GetString());
            Assert.Equal(12, report.RootElement.GetProperty("runs")[0].GetProperty("requests").GetProperty("ok").GetInt64());
            // The timeline covers every measured request, in intervals from the start of the measurement.
            JsonElement[] timeline = report.RootElement.GetProperty("runs")[0].GetProperty("timeline").EnumerateArray().ToArray();
            Assert.NotEmpty(timeline);
            Assert.Equal(12, timeline.Sum(p => p.GetProperty("ok").GetInt64()));
            Assert.Equal(0, timeline[0].GetProperty("start_s").GetDouble());
            var served = await server.Stub.GetModelInfoAsync(new XRay.Contracts.V1.GetModelInfoRequest()).ResponseAsync.WaitAsync(Bound);
            Assert.Equal(served.Architecture, report.RootElement.GetProperty("model").GetProperty("architecture").GetString());
            Assert.Contains("| c=3 |", output.ToString());
            Assert.True(File.Exists(Path.Combine(directory, "report.md")));
            Assert.True(new FileInfo(Path.Combine(directory, "latency.png")).Length > 1000);
            Assert.True(new FileInfo(Path.Combine(directory, "throughput.png")).Length > 1000);

            string again = Path.Combine(directory, "again");
            int rendered = await LoadTestApp.RunAsync(["render", Path.Combine(directory, "report.json"), "--out", again], TextWriter.Null, error).WaitAsync(Bound);
            Assert.True(rendered == 0, error.ToString());
            Assert.Equal(File.ReadAllText(Path.Combine(directory, "report.md")), File.ReadAllText(Path.Combine(again, "report.md")));
            Assert.True(File.Exists(Path.Combine(again, "latency.png")));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task Cli_OpenLoopSweep_RunsEachRateInOrder()
    {
        await using var server = await TestServer.StartAsync();
        string directory = Directory.CreateTempSubdirectory("xray-sweep").FullName;
        try
        {
            var error = new StringWriter();

            int exit = await LoadTestApp.RunAsync(
                ["sweep", "-t", server.Address, "--mode", "open", "--arrival", "constant", "--levels", "5,10", "--duration", "1", "--warmup", "0",
                 "--slo-ms", "60000", "--out", directory],
                TextWriter.Null, error).WaitAsync(Bound);

            Assert.True(exit == 0, error.ToString());
            using JsonDocument json = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "report.json")));
            Assert.Equal([5.0, 10.0], json.RootElement.GetProperty("runs").EnumerateArray().Select(r => r.GetProperty("rate_rps").GetDouble()));
            Assert.Equal("rate", json.RootElement.GetProperty("sweep").GetProperty("over").GetString());
            Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("sweep").GetProperty("stopped_at").ValueKind);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task Cli_BadOptionsOrUnreachableServer_ExplainAndFail()
    {
        var error = new StringWriter();
        int badMode = await LoadTestApp.RunAsync(["run", "--mode", "sideways", "-t", "http://127.0.0.1:1"], TextWriter.Null, error).WaitAsync(Bound);
        Assert.Equal(2, badMode);
        Assert.Contains("--mode must be one of closed, open", error.ToString());

        error = new StringWriter();
        int noRate = await LoadTestApp.RunAsync(["run", "--mode", "open", "-t", "http://127.0.0.1:1"], TextWriter.Null, error).WaitAsync(Bound);
        Assert.Equal(2, noRate);
        Assert.Contains("needs a rate", error.ToString());

        error = new StringWriter();
        int unreachable = await LoadTestApp.RunAsync(["run", "-t", "http://127.0.0.1:1", "-n", "1"], TextWriter.Null, error).WaitAsync(Bound);
        Assert.Equal(4, unreachable);
        Assert.Contains("cannot reach", error.ToString());
    }

    /// <summary>
    /// The whole bench with child xray-server processes, scaled down to seconds: both servers start, are measured
    /// and are stopped (their ports closed afterwards), and every ratio is computed.
    /// </summary>
    [Fact]
    public async Task Bench_StartsBothServersMeasuresAndStopsThem()
    {
        string directory = Directory.CreateTempSubdirectory("xray-bench").FullName;
        try
        {
            var error = new StringWriter();
            int exit = await LoadTestApp.RunAsync(
            [
                "bench", "--device", "cpu", "--raw-batch-sizes", "1,2", "--raw-seconds", "0.2", "--raw-iterations", "2",
                "--max-batch-size", "4", "--concurrency", "4", "--duration", "3", "--warmup", "1", "--probe-seconds", "2",
                "--server-arg=--warmup=none", "--out", directory,
            ], TextWriter.Null, error).WaitAsync(TimeSpan.FromMinutes(4));

            Assert.True(exit == 0, error.ToString());
            using JsonDocument json = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "report.json")));
            JsonElement bench = json.RootElement.GetProperty("bench");
            // The sizes asked for, then (sorted in) those the batched server ran: all within its MaxBatchSize of 4.
            int[] rawSizes = bench.GetProperty("raw").EnumerateArray().Select(p => p.GetProperty("batch_size").GetInt32()).ToArray();
            Assert.Subset(rawSizes.ToHashSet(), new HashSet<int> { 1, 2 });
            Assert.Equal(rawSizes.Order().Distinct(), rawSizes);
            Assert.All(rawSizes, size => Assert.InRange(size, 1, 4));
            Assert.Equal(1, bench.GetProperty("unbatched").GetProperty("max_batch_size").GetInt32());
            Assert.Equal(4, bench.GetProperty("batched").GetProperty("max_batch_size").GetInt32());
            Assert.Equal(1, bench.GetProperty("unbatched").GetProperty("run").GetProperty("server").GetProperty("batch_size").GetProperty("max").GetInt32());
            Assert.True(bench.GetProperty("unbatched").GetProperty("run").GetProperty("server_cpu").GetProperty("cpu_seconds").GetDouble() > 0);
            foreach (string ratio in new[] { "unbatched_over_raw_b1", "batched_over_raw_same_batch_sizes", "batched_over_unbatched", "overhead_p50_ms" })
            {
                Assert.True(bench.GetProperty("ratios").GetProperty(ratio).ValueKind == JsonValueKind.Number, $"{ratio} missing: {bench}");
            }
            Assert.True(File.Exists(Path.Combine(directory, "bench.png")));
            foreach (string phase in new[] { "unbatched", "batched" })
            {
                var target = new Uri(bench.GetProperty(phase).GetProperty("target").GetString()!);
                using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await Assert.ThrowsAsync<SocketException>(async () => await socket.ConnectAsync(target.Host, target.Port).WaitAsync(Bound));
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void PayloadPool_Files_BecomeGrayscaleTensorsAtCropSizeWithTheModelsNormalisation()
    {
        string directory = Directory.CreateTempSubdirectory("xray-payload").FullName;
        try
        {
            string file = Path.Combine(directory, "chest.png");
            File.WriteAllBytes(file, PayloadPool.GeneratePng(300, seed: 3));
            var pre = DefaultPreprocessing();

            var bytes = PayloadPool.Create(new PayloadSpec { Kind = PayloadKind.UInt8, Files = [file] }, pre).Next().Tensor;
            var floats = PayloadPool.Create(new PayloadSpec { Kind = PayloadKind.Float32, Channels = 3, Files = [file] }, pre).Next().Tensor;

            Assert.Equal([1L, 224, 224], bytes.Shape);
            Assert.Equal([3L, 224, 224], floats.Shape);
            byte[] luma = bytes.Data.ToByteArray();
            float[] chw = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(floats.Data.Span).ToArray();
            Assert.True(luma.Distinct().Count() > 50, "a radiograph-like image, not a flat plane");
            for (int c = 0; c < 3; c++)
            {
                foreach (int i in new[] { 0, 224 * 112 + 112, 224 * 224 - 1 })
                {
                    Assert.Equal((luma[i] / 255f - pre.Mean[c]) / pre.Std[c], chw[c * 224 * 224 + i], 5);
                }
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static PayloadPool Pool(PayloadKind kind) =>
        PayloadPool.Create(new PayloadSpec { Kind = kind, Variants = 3, PngSize = 256 }, DefaultPreprocessing());

    private static XRay.Contracts.V1.Preprocessing DefaultPreprocessing() =>
        new() { ResizeSize = 224, CropSize = 224, Mean = { 0.485f, 0.456f, 0.406f }, Std = { 0.229f, 0.224f, 0.225f }, Color = "grayscale, replicated to 3 channels" };
}
