// Abuse and overload scenarios against a real xray-server child process: how much one caller can cost the others.
// Not a test: a benchmark whose figures go into README's operations section. Run from the repository root:
//
//   dotnet build server/XRay.Server -c Release
//   dotnet run loadtest/bounds/bounds-bench.cs -c Release -- <scenario> [options]
//
// Scenarios (each starts its own server on free loopback ports and stops it):
//   decode    many callers send large PNGs while one caller sends 1-image tensors: server RSS, the other caller's latency
//   overload  warm-up, then rounds of capacity (closed loop) and open-loop arrivals at --factor x capacity:
//             goodput / capacity per round, latencies, what the model and each side's CPU did
//   fairness  one stream keeps --in-flight requests queued while a second connection sends 1-image unary calls
//   sigterm   unary callers, --streams streams that keep sending (one connection) and idle streams, then SIGTERM:
//             requests lost (accepted but never answered), time to exit, exit code
//   soak      a mixed load at --load x capacity for --minutes: RSS over time
// Options: --server PATH (xray-server apphost; default the Release build), --server-arg ARG (repeatable),
//          --seconds N, --callers N, --png WxH, --images N, --factor X, --max-queue-size N, --minutes N, --load X,
//          --in-flight N, --streams N (sigterm; default 6), --capacity-seconds N (decode: measure throughput before the burst),
//          --rounds N (overload: overload phases, each between two capacity phases; default 3),
//          --generator client|h2load (overload: this process's .NET gRPC client, or h2load from nghttp2-client, whose
//          requests cost a shared machine far less CPU; answers are then counted from the server's metrics).
// The server inherits this process's environment: MALLOC_CONF=... compares jemalloc settings.
// Exit codes: 0 done, 2 bad arguments, 3 the server did not start.
#:project ../../clients/XRay.Client/XRay.Client.csproj
#:package SkiaSharp
#:package SkiaSharp.NativeAssets.Linux.NoDependencies
#:property PublishAot=false

using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using SkiaSharp;
using XRay.Client;
using XRay.Contracts.V1;

var options = BenchOptions.Parse(args);
if (options is null)
{
    return 2;
}

try
{
    return options.Scenario switch
    {
        "decode" => await Scenarios.DecodeAsync(options),
        "overload" => await Scenarios.OverloadAsync(options),
        "fairness" => await Scenarios.FairnessAsync(options),
        "sigterm" => await Scenarios.SigtermAsync(options),
        "soak" => await Scenarios.SoakAsync(options),
        _ => throw new ArgumentException($"unknown scenario '{options.Scenario}': decode, overload, fairness, sigterm or soak"),
    };
}
catch (ArgumentException ex)
{
    Console.Error.WriteLine($"error: {ex.Message}");
    return 2;
}
catch (ServerStartException ex)
{
    Console.Error.WriteLine($"error: {ex.Message}");
    return 3;
}

sealed class BenchOptions
{
    public string Scenario { get; private set; } = "";
    public string Server { get; private set; } = "server/XRay.Server/bin/Release/net10.0/linux-x64/xray-server";
    public List<string> ServerArgs { get; } = [];
    public double Seconds { get; private set; } = 20;
    public int Callers { get; private set; } = 12;
    public (int Width, int Height) Png { get; private set; } = (4300, 3500);
    public int Images { get; private set; } = 2;
    public double Factor { get; private set; } = 3;
    public int MaxQueueSize { get; private set; } = 64;
    public double Minutes { get; private set; } = 10;
    public double Load { get; private set; } = 0.7;
    public int InFlight { get; private set; } = 256;
    public int Streams { get; private set; } = 6;
    public double CapacitySeconds { get; private set; }
    public int Rounds { get; private set; } = 3;
    public string Generator { get; private set; } = "client";

    public static BenchOptions? Parse(string[] args)
    {
        if (args.Length == 0)
        {
            Console.Error.WriteLine("usage: bounds-bench.cs <decode|overload|fairness|sigterm|soak> [--server PATH] [--server-arg ARG]... [options]");
            return null;
        }
        var o = new BenchOptions { Scenario = args[0] };
        for (int i = 1; i < args.Length; i++)
        {
            string name = args[i];
            if (i + 1 >= args.Length)
            {
                Console.Error.WriteLine($"error: {name} needs a value");
                return null;
            }
            string value = args[++i];
            switch (name)
            {
                case "--server": o.Server = value; break;
                case "--server-arg": o.ServerArgs.Add(value); break;
                case "--seconds": o.Seconds = double.Parse(value, CultureInfo.InvariantCulture); break;
                case "--callers": o.Callers = int.Parse(value, CultureInfo.InvariantCulture); break;
                case "--png":
                    string[] wh = value.Split('x');
                    o.Png = (int.Parse(wh[0], CultureInfo.InvariantCulture), int.Parse(wh[1], CultureInfo.InvariantCulture));
                    break;
                case "--images": o.Images = int.Parse(value, CultureInfo.InvariantCulture); break;
                case "--factor": o.Factor = double.Parse(value, CultureInfo.InvariantCulture); break;
                case "--max-queue-size": o.MaxQueueSize = int.Parse(value, CultureInfo.InvariantCulture); break;
                case "--minutes": o.Minutes = double.Parse(value, CultureInfo.InvariantCulture); break;
                case "--load": o.Load = double.Parse(value, CultureInfo.InvariantCulture); break;
                case "--streams": o.Streams = int.Parse(value, CultureInfo.InvariantCulture); break;
                case "--in-flight": o.InFlight = int.Parse(value, CultureInfo.InvariantCulture); break;
                case "--generator" when value is "client" or "h2load": o.Generator = value; break;
                case "--rounds": o.Rounds = int.Parse(value, CultureInfo.InvariantCulture); break;
                case "--capacity-seconds": o.CapacitySeconds = double.Parse(value, CultureInfo.InvariantCulture); break;
                default:
                    Console.Error.WriteLine($"error: unknown option {name}");
                    return null;
            }
        }
        return o;
    }
}

static class Scenarios
{
    public static async Task<int> DecodeAsync(BenchOptions o)
    {
        await using var server = await Server.StartAsync(o, []);
        if (o.CapacitySeconds > 0)
        {
            using var pool = new ChannelPool(server.Address, 4);
            double capacity = await MeasureCapacityAsync(pool, TimeSpan.FromSeconds(o.CapacitySeconds), concurrency: 32);
            Console.WriteLine($"decode: capacity before the burst {capacity:F1} img/s (1-image tensors, 32 callers)");
        }
        byte[] png = Payloads.LargePng(o.Png.Width, o.Png.Height);
        var big = Payloads.Encoded(Enumerable.Repeat(png, o.Images));
        using var probeChannel = Server.Channel(server.Address);
        var probe = new Classifier.ClassifierClient(probeChannel);
        await probe.ClassifyAsync(Payloads.Tensor(0));
        await Task.Delay(TimeSpan.FromSeconds(2));
        long rssBefore = server.RssBytes();
        Console.WriteLine($"decode: {o.Callers} callers, {o.Images} x {o.Png.Width}x{o.Png.Height} PNG ({png.Length / 1024} KB each) per request, {o.Seconds} s");

        using var sampler = new RssSampler(server);
        var probeLatency = new Latencies();
        var bigOutcomes = new Outcomes();
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(o.Seconds));
        var attackers = Enumerable.Range(0, o.Callers).Select(async _ =>
        {
            using var channel = Server.Channel(server.Address);
            var client = new Classifier.ClassifierClient(channel);
            while (!stop.IsCancellationRequested)
            {
                await bigOutcomes.CallAsync(() => client.ClassifyAsync(big).ResponseAsync);
            }
        }).ToArray();
        var prober = Task.Run(async () =>
        {
            int seed = 1;
            while (!stop.IsCancellationRequested)
            {
                long t = Stopwatch.GetTimestamp();
                try
                {
                    await probe.ClassifyAsync(Payloads.Tensor(seed++));
                    probeLatency.Add(Stopwatch.GetElapsedTime(t));
                }
                catch (RpcException ex)
                {
                    Console.WriteLine($"  probe failed: {ex.StatusCode} {ex.Status.Detail}");
                }
            }
        });
        await Task.WhenAll(attackers.Append(prober));
        long peak = sampler.Peak;
        await Task.Delay(TimeSpan.FromSeconds(30));
        long after = server.RssBytes();
        Console.WriteLine($"  large-PNG requests: {bigOutcomes}");
        Console.WriteLine($"  other caller (1-image tensor, own connection): {probeLatency.Summary()}");
        Console.WriteLine($"  RSS MB: before {Mb(rssBefore)}, peak {Mb(peak)}, 30 s after the burst {Mb(after)}");
        return 0;
    }

    public static async Task<int> OverloadAsync(BenchOptions o)
    {
        await using var server = await Server.StartAsync(o, ["--max-queue-size", o.MaxQueueSize.ToString(CultureInfo.InvariantCulture)]);
        using var pool = new ChannelPool(server.Address, 4);
        using LoadGenerator generator = o.Generator switch
        {
            "h2load" => new H2loadGenerator(server),
            _ => new ClientGenerator(pool),
        };
        Console.WriteLine($"overload: load from {generator.Name}; {o.Rounds} rounds of {o.Seconds} s at {o.Factor}x capacity, MaxQueueSize={o.MaxQueueSize}");
        // Warm-up of both paths, answers and refusals, on both sides: the JIT compiles the refusal path only once
        // refusals happen, and would otherwise do it inside the first measured overload.
        var warmup = await generator.ClosedAsync(TimeSpan.FromSeconds(3), o.MaxQueueSize);
        await generator.OpenAsync(warmup.Ok / warmup.Wall.TotalSeconds * o.Factor, TimeSpan.FromSeconds(5));
        // The machine is shared and its speed drifts: capacity is measured before and after each overload round, and
        // each round is compared with the mean of its two neighbours.
        var capacities = new List<Phase> { await MeasureAsync(server, () => generator.ClosedAsync(TimeSpan.FromSeconds(o.Seconds / 2), o.MaxQueueSize)) };
        var ratios = new List<double>();
        for (int round = 1; round <= o.Rounds; round++)
        {
            double rate = capacities[^1].ImagesPerSecond * o.Factor;
            var overload = await MeasureAsync(server, () => generator.OpenAsync(rate, TimeSpan.FromSeconds(o.Seconds)));
            capacities.Add(await MeasureAsync(server, () => generator.ClosedAsync(TimeSpan.FromSeconds(o.Seconds / 2), o.MaxQueueSize)));
            Phase before = capacities[^2], after = capacities[^1];
            double reference = (before.ImagesPerSecond + after.ImagesPerSecond) / 2;
            ratios.Add(overload.Run.Goodput / reference);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"round {round}: capacity {before.ImagesPerSecond:F1} -> {after.ImagesPerSecond:F1} img/s (closed loop, {o.MaxQueueSize} in flight); " +
                $"open loop at {rate:F1} req/s ({o.Factor}x) for {o.Seconds} s"));
            Console.WriteLine($"  offered {overload.Run.Offered:F1} req/s; {overload.Run.Counts}");
            Console.WriteLine($"  goodput {overload.Run.Goodput:F1} img/s = {overload.Run.Goodput / reference:P1} of capacity ({reference:F1})");
            Console.WriteLine($"  {overload.Run.Latency}");
            Console.WriteLine($"  model, capacity before: {before.Batches.Describe(before.Run.Wall)}");
            Console.WriteLine($"  model, overload (to the last answer): {overload.Batches.Describe(overload.Run.Wall)}");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  server CPU per answer: capacity before {before.ServerCpuPerOk * 1000:F1} ms, overload {overload.ServerCpuPerOk * 1000:F1} ms; " +
                $"load generator CPU: capacity {before.GeneratorCpuShare:P0} of a core, overload {overload.GeneratorCpuShare:P0}"));
            Console.WriteLine($"  server threads (share of one core), capacity before: {before.Threads}");
            Console.WriteLine($"  server threads (share of one core), overload: {overload.Threads}");
        }
        Console.WriteLine($"  server-side handler time of rejections: {await server.RejectionHandlerTimesAsync()}");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"overload ({generator.Name}): goodput / capacity per round {string.Join(", ", ratios.Select(r => r.ToString("P1", CultureInfo.InvariantCulture)))}; median {Median(ratios):P1}"));
        return 0;
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length == 0 ? double.NaN
            : sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    /// <summary>One measured phase: what the generator saw, what the model did, and CPU on both sides.</summary>
    private sealed record Phase(GeneratorRun Run, BatchTotals Batches, double ServerCpuPerOk, double GeneratorCpuShare, string Threads)
    {
        public double ImagesPerSecond => Run.Ok / Run.Wall.TotalSeconds;
    }

    /// <summary>Measures around <paramref name="run"/>: server and generator CPU, batches, CPU by server thread.</summary>
    private static async Task<Phase> MeasureAsync(Server server, Func<Task<GeneratorRun>> run)
    {
        double cpu = server.CpuSeconds(), generator = LoadGenerator.CpuSeconds();
        var batches = await server.BatchTotalsAsync();
        var threads = server.ThreadCpuSeconds();
        GeneratorRun result = await run();
        var batchDelta = await server.BatchTotalsAsync() - batches;
        string threadDelta = Server.ThreadCpuDelta(threads, server.ThreadCpuSeconds(), result.Wall);
        return new Phase(result, batchDelta, (server.CpuSeconds() - cpu) / Math.Max(1, result.Ok),
            (LoadGenerator.CpuSeconds() - generator) / result.Wall.TotalSeconds, threadDelta);
    }

    public static async Task<int> FairnessAsync(BenchOptions o)
    {
        await using var server = await Server.StartAsync(o, []);
        using var probeChannel = Server.Channel(server.Address);
        var probe = new Classifier.ClassifierClient(probeChannel);
        await probe.ClassifyAsync(Payloads.Tensor(0));
        using var streamChannel = Server.Channel(server.Address);
        var streamer = new Classifier.ClassifierClient(streamChannel);
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(o.Seconds));
        var streamOutcomes = new Outcomes();
        // The stream keeps --in-flight requests outstanding: a new one goes out as each answer comes back.
        using var call = streamer.ClassifyStream();
        using var window = new SemaphoreSlim(o.InFlight, o.InFlight);
        var reader = Task.Run(async () =>
        {
            await foreach (var response in call.ResponseStream.ReadAllAsync())
            {
                if (response.Error is null) streamOutcomes.Count("OK"); else streamOutcomes.Count(((StatusCode)response.Error.Code).ToString());
                window.Release();
            }
        });
        var writer = Task.Run(async () =>
        {
            int seed = 0;
            while (!stop.IsCancellationRequested)
            {
                await window.WaitAsync();
                await call.RequestStream.WriteAsync(Payloads.Tensor(seed++));
            }
            await call.RequestStream.CompleteAsync();
        });
        await Task.Delay(TimeSpan.FromSeconds(2));
        var probeLatency = new Latencies();
        int i = 1;
        while (!stop.IsCancellationRequested)
        {
            long t = Stopwatch.GetTimestamp();
            await probe.ClassifyAsync(Payloads.Tensor(i++));
            probeLatency.Add(Stopwatch.GetElapsedTime(t));
        }
        await writer;
        await reader;
        Console.WriteLine($"fairness: one stream with {o.InFlight} in flight ({streamOutcomes}); unary caller on its own connection: {probeLatency.Summary()}");
        return 0;
    }

    public static async Task<int> SigtermAsync(BenchOptions o)
    {
        await using var server = await Server.StartAsync(o, []);
        var outcomes = new Outcomes();
        using var stop = new CancellationTokenSource();
        var callers = Enumerable.Range(0, o.Callers).Select(async c =>
        {
            using var channel = Server.Channel(server.Address);
            var client = new Classifier.ClassifierClient(channel);
            int seed = c * 100_000;
            while (!stop.IsCancellationRequested)
            {
                var result = await outcomes.CallAsync(() => client.ClassifyAsync(Payloads.Tensor(seed++)).ResponseAsync);
                if (result is StatusCode.Unavailable) break;
            }
        }).ToArray();
        // Streams that keep sending until the server ends them, all on one connection: a stream the server ends must
        // not cost the others their answers.
        using var streamChannel = Server.Channel(server.Address);
        var streams = Enumerable.Range(0, o.Streams).Select(s => SendUntilEndedAsync(new Classifier.ClassifierClient(streamChannel), s)).ToArray();
        // Idle streams left open by careless clients.
        using var idleChannel = Server.Channel(server.Address);
        var idle = Enumerable.Range(0, 8).Select(_ => new Classifier.ClassifierClient(idleChannel).ClassifyStream()).ToList();
        await Task.Delay(TimeSpan.FromSeconds(o.Seconds));
        var clock = Stopwatch.StartNew();
        server.Signal(15);
        await server.Process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        double exitSeconds = clock.Elapsed.TotalSeconds;
        stop.Cancel();
        await Task.WhenAll(callers).WaitAsync(TimeSpan.FromSeconds(30));
        StreamEnding[] ended = await Task.WhenAll(streams).WaitAsync(TimeSpan.FromSeconds(30));
        foreach (var stream in idle) stream.Dispose();
        Console.WriteLine($"sigterm: {o.Callers} unary callers + {o.Streams} sending streams on one connection + 8 idle streams; exit {server.Process.ExitCode} after {exitSeconds:F2} s");
        Console.WriteLine($"  unary: {outcomes}; lost (accepted, not answered) = {outcomes.Lost}");
        if (ended.Length > 0)
        {
            // Requests a stream wrote but never had answered are lost unless the server ended the stream UNAVAILABLE,
            // which tells the client that the rest were not read.
            int lost = ended.Where(e => e.Status != StatusCode.Unavailable).Sum(e => e.Written - e.Answered);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  streams: {ended.Sum(e => e.Written)} written, {ended.Sum(e => e.Answered)} answered in the stream; ended " +
                $"{string.Join(", ", ended.GroupBy(e => e.Status).Select(g => $"{g.Key} x{g.Count()}"))}; lost = {lost}"));
        }
        return 0;
    }

    private sealed record StreamEnding(int Written, int Answered, StatusCode Status);

    /// <summary>
    /// Keeps 4 requests outstanding on one ClassifyStream until the server refuses one (UNAVAILABLE in the stream: it is
    /// shutting down), then stops writing and half-closes, as a client should; counts what was written and answered.
    /// </summary>
    private static async Task<StreamEnding> SendUntilEndedAsync(Classifier.ClassifierClient client, int stream)
    {
        using var call = client.ClassifyStream();
        using var window = new SemaphoreSlim(4, 4);
        var refused = new TaskCompletionSource();
        int written = 0, answered = 0;
        Task<StatusCode> reader = Task.Run(async () =>
        {
            try
            {
                await foreach (var response in call.ResponseStream.ReadAllAsync())
                {
                    Interlocked.Increment(ref answered);
                    if (response.Error?.Code == (int)StatusCode.Unavailable) refused.TrySetResult();
                    window.Release();
                }
                return StatusCode.OK;
            }
            catch (RpcException ex)
            {
                return ex.StatusCode;
            }
        });
        int seed = stream * 1_000_000;
        try
        {
            while (!reader.IsCompleted && !refused.Task.IsCompleted)
            {
                Task slot = window.WaitAsync();
                if (await Task.WhenAny(slot, reader, refused.Task) != slot) break;
                await call.RequestStream.WriteAsync(Payloads.Tensor(seed++));
                written++;
            }
            if (!reader.IsCompleted) await call.RequestStream.CompleteAsync();
        }
        catch (Exception ex) when (ex is RpcException or InvalidOperationException or IOException)
        {
            // The server ended the call while this write was going out: it was not taken.
        }
        StatusCode status = await reader;
        return new StreamEnding(written, Volatile.Read(ref answered), status);
    }

    public static async Task<int> SoakAsync(BenchOptions o)
    {
        await using var server = await Server.StartAsync(o, []);
        using var pool = new ChannelPool(server.Address, 4);
        double capacity = await MeasureCapacityAsync(pool, TimeSpan.FromSeconds(10), concurrency: 32);
        // A mix: tensors, a radiograph-sized PNG, small JPEGs, and garbage.
        byte[] film = Payloads.LargePng(2500, 2048);
        byte[] jpeg = Payloads.Jpeg(1024, 1024);
        var requests = new Func<int, ClassifyRequest>[]
        {
            Payloads.Tensor,
            seed => Payloads.Encoded([film]),
            seed => Payloads.Encoded([jpeg, jpeg]),
            seed => Payloads.Encoded([new byte[] { 0x89, 0x50, 0x4E, 0x47, 1, 2, 3 }]),
        };
        double rate = capacity * o.Load / 1.5;
        Console.WriteLine($"soak: capacity {capacity:F1} img/s; {rate:F1} req/s of mixed requests for {o.Minutes} min");
        var outcomes = new Outcomes();
        var duration = TimeSpan.FromMinutes(o.Minutes);
        var calls = new ConcurrentDictionary<int, Task>();
        var clock = Stopwatch.StartNew();
        var nextSample = TimeSpan.Zero;
        long? firstMinute = null;
        int n = 0;
        while (clock.Elapsed < duration)
        {
            if (clock.Elapsed >= nextSample)
            {
                long rss = server.RssBytes();
                if (clock.Elapsed >= TimeSpan.FromMinutes(1)) firstMinute ??= rss;
                Console.WriteLine($"  t={clock.Elapsed.TotalSeconds,5:F0} s RSS {Mb(rss)} MB; {await server.MemoryAsync()}; {outcomes}");
                nextSample += TimeSpan.FromSeconds(30);
            }
            var due = TimeSpan.FromSeconds(n / rate);
            if (due > clock.Elapsed) await Task.Delay(due - clock.Elapsed);
            var client = pool.Next();
            int id = n++;
            var request = requests[id % requests.Length](id);
            var task = outcomes.CallAsync(() => client.ClassifyAsync(request).ResponseAsync);
            calls[id] = task;
            _ = task.ContinueWith(_ => calls.TryRemove(id, out Task? _), TaskScheduler.Default);
        }
        await Task.WhenAll(calls.Values);
        long end = server.RssBytes();
        Console.WriteLine($"  {outcomes}");
        Console.WriteLine($"  memory at end: {await server.MemoryAsync()}");
        Console.WriteLine($"  RSS MB: at 1 min {Mb(firstMinute ?? end)}, at end {Mb(end)}, growth {Mb(end - (firstMinute ?? end))}");
        return 0;
    }

    private static async Task<double> MeasureCapacityAsync(ChannelPool pool, TimeSpan duration, int concurrency)
    {
        // Warm-up, then count answers over the window.
        await RunClosedAsync(pool, TimeSpan.FromSeconds(3), concurrency);
        var outcomes = await RunClosedAsync(pool, duration, concurrency);
        return outcomes.Ok / duration.TotalSeconds;
    }

    public static async Task<Outcomes> RunClosedAsync(ChannelPool pool, TimeSpan duration, int concurrency)
    {
        var outcomes = new Outcomes();
        var stop = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async c =>
        {
            var client = pool.Next();
            int seed = c * 1_000_000;
            while (stop.Elapsed < duration)
            {
                await outcomes.CallAsync(() => client.ClassifyAsync(Payloads.Tensor(seed++)).ResponseAsync);
            }
        }));
        return outcomes;
    }

    public static string Mb(long bytes) => (bytes / 1048576.0).ToString("F0", CultureInfo.InvariantCulture);
}

static class Payloads
{
    public const int Size = 224;

    // 256 distinct random images, made once: the load generator shares the server's cores, so a request must cost it
    // little more than its serialization.
    private static readonly XRay.Contracts.V1.Tensor[] s_tensors = Enumerable.Range(0, 256).Select(seed =>
    {
        var pixels = new byte[Size * Size];
        new Random(seed).NextBytes(pixels);
        return Tensors.UInt8(pixels, 1, Size, Size);
    }).ToArray();

    public static ClassifyRequest Tensor(int seed) =>
        new() { RequestId = $"t{seed}", Tensor = s_tensors[(int)((uint)seed % s_tensors.Length)] };

    public static ClassifyRequest Encoded(IEnumerable<byte[]> images)
    {
        var request = new ClassifyRequest { RequestId = "encoded", Encoded = new EncodedImages() };
        foreach (var image in images) request.Encoded.Images.Add(ByteString.CopyFrom(image));
        return request;
    }

    /// <summary>A grayscale PNG of a film's size: smooth, so it compresses to little while decoding to a lot.</summary>
    public static byte[] LargePng(int width, int height)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque));
        Span<byte> pixels = bitmap.GetPixelSpan();
        for (int y = 0; y < height; y++)
        {
            pixels.Slice(y * bitmap.RowBytes, width).Fill((byte)(y * 255 / height));
        }
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }

    public static byte[] Jpeg(int width, int height)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque));
        Span<byte> pixels = bitmap.GetPixelSpan();
        new Random(7).NextBytes(pixels);
        using var data = bitmap.Encode(SKEncodedImageFormat.Jpeg, 90);
        return data.ToArray();
    }
}

/// <summary>Outcomes by status, with latencies of answers and of refusals.</summary>
sealed class Outcomes
{
    private readonly ConcurrentDictionary<string, int> _counts = new();
    private int _lost;

    public Latencies OkLatency { get; } = new();
    public Latencies RejectedLatency { get; } = new();
    public int Ok => _counts.GetValueOrDefault("OK");
    public int Lost => Volatile.Read(ref _lost);

    public void Count(string outcome) => _counts.AddOrUpdate(outcome, 1, (_, n) => n + 1);

    /// <summary>Runs one call; returns its status (OK on success).</summary>
    public async Task<StatusCode> CallAsync(Func<Task> call)
    {
        long started = Stopwatch.GetTimestamp();
        try
        {
            await call();
            OkLatency.Add(Stopwatch.GetElapsedTime(started));
            Count("OK");
            return StatusCode.OK;
        }
        catch (RpcException ex)
        {
            // Refused before the request was taken: the server's own statuses, or no connection at all.
            bool notSent = ex.StatusCode == StatusCode.Unavailable
                && ex.Status.DebugException is SocketException or HttpRequestException { InnerException: SocketException };
            bool refused = ex.StatusCode is StatusCode.ResourceExhausted or StatusCode.InvalidArgument or StatusCode.DeadlineExceeded
                || (ex.StatusCode == StatusCode.Unavailable && ex.Status.DebugException is null);
            if (refused) RejectedLatency.Add(Stopwatch.GetElapsedTime(started));
            if (!refused && !notSent && Interlocked.Increment(ref _lost) <= 3)
            {
                Console.WriteLine($"  lost: {ex.StatusCode} {ex.Status.Detail} {ex.Status.DebugException?.GetType().Name}: {ex.Status.DebugException?.Message}");
            }
            Count(notSent ? "not sent (connection refused)" : refused ? ex.StatusCode.ToString() : $"LOST {ex.StatusCode}");
            return ex.StatusCode;
        }
    }

    public override string ToString() => string.Join(", ", _counts.OrderBy(c => c.Key).Select(c => $"{c.Key} {c.Value}"));
}

sealed class Latencies
{
    private readonly List<double> _ms = [];

    public void Add(TimeSpan elapsed)
    {
        lock (_ms) _ms.Add(elapsed.TotalMilliseconds);
    }

    public int Count
    {
        get { lock (_ms) return _ms.Count; }
    }

    public string Summary()
    {
        lock (_ms)
        {
            if (_ms.Count == 0) return "n=0";
            var sorted = _ms.Order().ToArray();
            double P(double p) => sorted[Math.Min(sorted.Length - 1, (int)(p / 100 * sorted.Length))];
            return string.Create(CultureInfo.InvariantCulture,
                $"n={sorted.Length} p50 {Fmt(P(50))} p99 {Fmt(P(99))} max {Fmt(sorted[^1])}");
        }
    }

    private static string Fmt(double ms) => ms < 1 ? $"{ms * 1000:F0} us" : $"{ms:F1} ms";
}

sealed class ChannelPool : IDisposable
{
    private readonly GrpcChannel[] _channels;
    private readonly Classifier.ClassifierClient[] _clients;
    private int _next;

    public ChannelPool(string address, int count)
    {
        _channels = Enumerable.Range(0, count).Select(_ => Server.Channel(address)).ToArray();
        _clients = _channels.Select(c => new Classifier.ClassifierClient(c)).ToArray();
    }

    public Classifier.ClassifierClient Next() => _clients[(int)((uint)Interlocked.Increment(ref _next) % _clients.Length)];

    public void Dispose()
    {
        foreach (var channel in _channels) channel.Dispose();
    }
}

sealed class RssSampler : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private long _peak;

    public RssSampler(Server server)
    {
        _ = Task.Run(async () =>
        {
            while (!_stop.IsCancellationRequested)
            {
                long rss = server.RssBytes();
                if (rss > Volatile.Read(ref _peak)) Volatile.Write(ref _peak, rss);
                await Task.Delay(100);
            }
        });
    }

    public long Peak => Volatile.Read(ref _peak);

    public void Dispose() => _stop.Cancel();
}

/// <summary>
/// One run of a load generator: answers, counts by status, wall time, and for an open loop the goodput (answers per
/// second from the first quarter, when the queue has filled, to the last arrival) and the offered rate.
/// </summary>
sealed record GeneratorRun(int Ok, string Counts, TimeSpan Wall, double Goodput, double Offered, string Latency);

/// <summary>What sends the overload scenario's requests: unary Classify calls of one 1x224x224 uint8 tensor each.</summary>
abstract class LoadGenerator : IDisposable
{
    public abstract string Name { get; }

    /// <summary>Keeps <paramref name="concurrency"/> requests outstanding for <paramref name="duration"/>.</summary>
    public abstract Task<GeneratorRun> ClosedAsync(TimeSpan duration, int concurrency);

    /// <summary>Sends <paramref name="rate"/> requests a second for <paramref name="duration"/>, whatever the answers.</summary>
    public abstract Task<GeneratorRun> OpenAsync(double rate, TimeSpan duration);

    public virtual void Dispose()
    {
    }

    /// <summary>CPU seconds of this process and of the child processes it has waited for (h2load), not the server's.</summary>
    public static double CpuSeconds()
    {
        _ = GetRusage(-1, out Rusage children);
        return Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds + children.Seconds;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Rusage
    {
        public long UserSeconds, UserMicroseconds, SystemSeconds, SystemMicroseconds;
        // The remaining 14 counters of struct rusage, unused.
        public long R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, R11, R12, R13;

        public readonly double Seconds => UserSeconds + SystemSeconds + (UserMicroseconds + SystemMicroseconds) / 1e6;
    }

    [DllImport("libc", EntryPoint = "getrusage")]
    private static extern int GetRusage(int who, out Rusage usage);
}

/// <summary>This process's generated gRPC client (Grpc.Net.Client), as the product's callers use it: per-call outcomes and latencies.</summary>
sealed class ClientGenerator(ChannelPool pool) : LoadGenerator
{
    public override string Name => "the .NET gRPC client in this process";

    public override async Task<GeneratorRun> ClosedAsync(TimeSpan duration, int concurrency)
    {
        var clock = Stopwatch.StartNew();
        Outcomes outcomes = await Scenarios.RunClosedAsync(pool, duration, concurrency);
        return new GeneratorRun(outcomes.Ok, outcomes.ToString(), clock.Elapsed, 0, 0, Latency(outcomes));
    }

    public override async Task<GeneratorRun> OpenAsync(double rate, TimeSpan duration)
    {
        var outcomes = new Outcomes();
        var calls = new List<Task>();
        var clock = Stopwatch.StartNew();
        var settled = duration / 4;
        int? okAtSettled = null;
        int n = 0;
        while (clock.Elapsed < duration)
        {
            if (clock.Elapsed >= settled) okAtSettled ??= outcomes.Ok;
            var due = TimeSpan.FromSeconds(n / rate);
            if (due > clock.Elapsed) await Task.Delay(due - clock.Elapsed);
            var client = pool.Next();
            int seed = n++;
            calls.Add(outcomes.CallAsync(() => client.ClassifyAsync(Payloads.Tensor(seed)).ResponseAsync));
        }
        double goodput = (outcomes.Ok - (okAtSettled ?? 0)) / (clock.Elapsed - settled).TotalSeconds;
        await Task.WhenAll(calls);
        return new GeneratorRun(outcomes.Ok, outcomes.ToString(), clock.Elapsed, goodput, n / duration.TotalSeconds, Latency(outcomes));
    }

    private static string Latency(Outcomes outcomes) =>
        $"admitted latency: {outcomes.OkLatency.Summary()}; rejection latency: {outcomes.RejectedLatency.Summary()}";
}

/// <summary>
/// h2load (nghttp2-client) sending the same gRPC request body over 4 connections: a load generator written in C, so
/// that on a machine shared with the server the load costs the server little CPU. It sees only HTTP statuses, so
/// answers are counted from the server's metrics (Classify calls by gRPC status).
/// </summary>
sealed class H2loadGenerator : LoadGenerator
{
    private const int Connections = 4;
    private readonly Server _server;
    private readonly string _body = Path.GetTempFileName();

    public H2loadGenerator(Server server)
    {
        _server = server;
        byte[] message = Payloads.Tensor(0).ToByteArray();
        var framed = new byte[5 + message.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(framed.AsSpan(1), message.Length);
        message.CopyTo(framed, 5);
        File.WriteAllBytes(_body, framed);
    }

    public override string Name => "h2load";

    public override async Task<GeneratorRun> ClosedAsync(TimeSpan duration, int concurrency)
    {
        var before = await _server.ClassifyCountsAsync();
        var clock = Stopwatch.StartNew();
        string output = await RunAsync(duration, Math.Max(1, concurrency / Connections), rate: null);
        var wall = clock.Elapsed;
        var counts = await _server.ClassifyCountsAsync() - before;
        return new GeneratorRun((int)counts.Ok, counts.ToString(), wall, 0, 0, Summary(output));
    }

    public override async Task<GeneratorRun> OpenAsync(double rate, TimeSpan duration)
    {
        var before = await _server.ClassifyCountsAsync();
        var clock = Stopwatch.StartNew();
        Task<string> run = RunAsync(duration, streams: 100, rate);
        var settled = duration / 4;
        await Task.Delay(settled);
        var atSettled = await _server.ClassifyCountsAsync();
        var settledAt = clock.Elapsed;
        string output = await run;
        var wall = clock.Elapsed;
        var end = await _server.ClassifyCountsAsync();
        var counts = end - before;
        double goodput = (end.Ok - atSettled.Ok) / (wall - settledAt).TotalSeconds;
        return new GeneratorRun((int)counts.Ok, counts.ToString(), wall, goodput, (counts.Ok + counts.Refused) / duration.TotalSeconds, Summary(output));
    }

    private async Task<string> RunAsync(TimeSpan duration, int streams, double? rate)
    {
        var start = new ProcessStartInfo("h2load") { RedirectStandardOutput = true, RedirectStandardError = true };
        string[] args =
        [
            "-c", Connections.ToString(CultureInfo.InvariantCulture), "-t", "1", "-m", streams.ToString(CultureInfo.InvariantCulture),
            "-D", Math.Max(1, (int)Math.Round(duration.TotalSeconds)).ToString(CultureInfo.InvariantCulture),
            "-d", _body, "-H", "content-type: application/grpc", "-H", "te: trailers",
            .. rate is double r ? (string[])["--rps", (r / Connections).ToString("F2", CultureInfo.InvariantCulture)] : [],
            $"{_server.Address}/xray.v1.Classifier/Classify",
        ];
        foreach (string a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start h2load");
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0) throw new InvalidOperationException($"h2load exited with {process.ExitCode}: {await stderr}");
        return await stdout;
    }

    /// <summary>h2load's request counts and its request times (it sees every gRPC status as HTTP 200).</summary>
    private static string Summary(string output) => "h2load: " + string.Join("; ", output.Split('\n')
        .Where(l => l.StartsWith("requests:", StringComparison.Ordinal) || l.StartsWith("time for request:", StringComparison.Ordinal))
        .Select(l => string.Join(' ', l.Split(' ', StringSplitOptions.RemoveEmptyEntries))));

    public override void Dispose() => File.Delete(_body);
}

/// <summary>Classify calls answered OK and refused RESOURCE_EXHAUSTED, from the server's request-duration counts.</summary>
readonly record struct ClassifyCounts(double Ok, double Refused)
{
    public static ClassifyCounts operator -(ClassifyCounts a, ClassifyCounts b) => new(a.Ok - b.Ok, a.Refused - b.Refused);

    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"OK {Ok:F0}, RESOURCE_EXHAUSTED {Refused:F0} (server's counts)");
}

/// <summary>One scrape of the server's Prometheus endpoint.</summary>
sealed class MetricsScrape(string[] lines)
{
    /// <summary>The sum of the samples of metric <paramref name="name"/> whose line contains every one of <paramref name="labels"/>.</summary>
    public double Sum(string name, params string[] labels) => lines
        .Where(l => l.StartsWith(name, StringComparison.Ordinal) && l.Length > name.Length && l[name.Length] is '{' or ' '
            && labels.All(label => l.Contains(label, StringComparison.Ordinal)))
        .Sum(l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture));
}

/// <summary>Cumulative batch counters; the difference of two is one phase of a run.</summary>
readonly record struct BatchTotals(double Batches, double Images, double ComputeSeconds)
{
    public static BatchTotals operator -(BatchTotals a, BatchTotals b) =>
        new(a.Batches - b.Batches, a.Images - b.Images, a.ComputeSeconds - b.ComputeSeconds);

    /// <summary>Mean batch size, compute per image, and the share of <paramref name="wall"/> the model was computing.</summary>
    public string Describe(TimeSpan wall) => string.Create(CultureInfo.InvariantCulture,
        $"{Batches:F0} batches of {Images / Math.Max(1, Batches):F1} images, {ComputeSeconds * 1000 / Math.Max(1, Images):F1} ms compute per image, model busy {ComputeSeconds / wall.TotalSeconds:P0} of {wall.TotalSeconds:F1} s");
}

sealed class ServerStartException(string message) : Exception(message);

sealed class Server : IAsyncDisposable
{
    private readonly List<string> _log = [];

    private Server(Process process, string address, string metricsAddress)
    {
        Process = process;
        Address = address;
        MetricsAddress = metricsAddress;
    }

    public string MetricsAddress { get; }

    /// <summary>
    /// From the server's own request-duration histogram (Prometheus /metrics): how many RESOURCE_EXHAUSTED answers
    /// took at most 0.5 ms and 1 ms in the handler. The client-side latency adds the machine's scheduling delays.
    /// </summary>
    public async Task<string> RejectionHandlerTimesAsync()
    {
        MetricsScrape metrics = await ScrapeAsync();
        const string Duration = "xray_server_request_duration_seconds";
        double count = metrics.Sum(Duration + "_count", "RESOURCE_EXHAUSTED");
        double Within(string le) => metrics.Sum(Duration + "_bucket", "RESOURCE_EXHAUSTED", $"le=\"{le}\"") / count;
        return count == 0 ? "none" : $"{count:F0} rejections, {Within("0.0005"):P1} within 0.5 ms, {Within("0.001"):P1} within 1 ms";
    }

    /// <summary>
    /// Where the memory is, from the server's metrics: the native allocator's (jemalloc) allocated, dirty (freed, kept)
    /// and resident MB, the GC heap after the last collection, and how often memory was released (idle, dirty_limit).
    /// </summary>
    public async Task<string> MemoryAsync()
    {
        MetricsScrape metrics;
        try
        {
            metrics = await ScrapeAsync();
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
        {
            return "metrics unavailable";
        }
        string N(string state) => Scenarios.Mb((long)metrics.Sum("xray_server_memory_native_bytes", $"xray_memory_state=\"{state}\""));
        return string.Create(CultureInfo.InvariantCulture,
            $"native allocated {N("allocated")} dirty {N("dirty")} resident {N("resident")} MB, GC heap {Scenarios.Mb((long)metrics.Sum("dotnet_gc_last_collection_heap_size_bytes"))} MB, " +
            $"releases idle {metrics.Sum("xray_server_memory_releases_total", "idle"):F0} dirty_limit {metrics.Sum("xray_server_memory_releases_total", "dirty_limit"):F0}");
    }

    /// <summary>Classify calls so far by outcome, from the server's metrics.</summary>
    public async Task<ClassifyCounts> ClassifyCountsAsync()
    {
        MetricsScrape metrics = await ScrapeAsync();
        double Count(string status) => metrics.Sum("xray_server_request_duration_seconds_count",
            "rpc_method=\"xray.v1.Classifier/Classify\"", $"rpc_response_status_code=\"{status}\"");
        return new ClassifyCounts(Count("OK"), Count("RESOURCE_EXHAUSTED"));
    }

    /// <summary>The model's batches so far, from the server's metrics: how many, their images, and compute seconds.</summary>
    public async Task<BatchTotals> BatchTotalsAsync()
    {
        MetricsScrape metrics = await ScrapeAsync();
        return new BatchTotals(metrics.Sum("xray_server_batch_size_count"), metrics.Sum("xray_server_batch_size_sum"),
            metrics.Sum("xray_server_batch_duration_seconds_sum"));
    }

    private async Task<MetricsScrape> ScrapeAsync()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        return new MetricsScrape((await http.GetStringAsync($"{MetricsAddress}/metrics")).Split('\n'));
    }

    public Process Process { get; }
    public string Address { get; }

    public static GrpcChannel Channel(string address) =>
        GrpcChannel.ForAddress(address, new GrpcChannelOptions { MaxReceiveMessageSize = null, MaxSendMessageSize = null });

    public static async Task<Server> StartAsync(BenchOptions o, string[] extra)
    {
        if (!File.Exists(o.Server)) throw new ArgumentException($"no server binary at {o.Server}: build it (dotnet build server/XRay.Server -c Release) or pass --server");
        string address = $"http://127.0.0.1:{FreePort()}";
        string metrics = $"http://127.0.0.1:{FreePort()}";
        var start = new ProcessStartInfo(o.Server) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])[.. o.ServerArgs, .. extra, "--grpc-url", address, "--metrics-url", metrics])
        {
            start.ArgumentList.Add(a);
        }
        var process = Process.Start(start) ?? throw new ServerStartException($"could not start {o.Server}");
        var server = new Server(process, address, metrics);
        process.OutputDataReceived += (_, e) => server.Keep(e.Data);
        process.ErrorDataReceived += (_, e) => server.Keep(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var client = new XRayClassifierClient(address, new XRayClientOptions { MaxAttempts = 1, Timeout = TimeSpan.FromSeconds(2) });
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMinutes(3))
        {
            if (process.HasExited)
            {
                throw new ServerStartException($"the server exited with {process.ExitCode}: {server.Tail()}");
            }
            try
            {
                if (await client.CheckHealthAsync() == Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus.Serving) return server;
            }
            catch (RpcException)
            {
            }
            await Task.Delay(250);
        }
        await server.DisposeAsync();
        throw new ServerStartException($"the server was not serving after 3 minutes: {server.Tail()}");
    }

    public long RssBytes()
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{Process.Id}/status"))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                {
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
                }
            }
        }
        catch (IOException)
        {
        }
        return 0;
    }

    /// <summary>CPU time (user + system) the server has used, from /proc (10 ms resolution).</summary>
    public double CpuSeconds()
    {
        try
        {
            return StatCpuSeconds(File.ReadAllText($"/proc/{Process.Id}/stat"));
        }
        catch (IOException)
        {
            return 0;
        }
    }

    /// <summary>User + system CPU seconds in a /proc stat line (process or thread; 10 ms resolution).</summary>
    private static double StatCpuSeconds(string stat)
    {
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // Fields 14 and 15 of stat (utime, stime), counted from the state field (3).
        return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / 100.0;
    }

    /// <summary>CPU seconds by thread name (inference, thread pool, GC, ...), from /proc: where the server's time goes.</summary>
    public Dictionary<string, double> ThreadCpuSeconds()
    {
        var byName = new Dictionary<string, double>();
        try
        {
            foreach (string task in Directory.EnumerateDirectories($"/proc/{Process.Id}/task"))
            {
                try
                {
                    string stat = File.ReadAllText(Path.Combine(task, "stat"));
                    string name = stat[(stat.IndexOf('(') + 1)..stat.LastIndexOf(')')];
                    byName[name] = byName.GetValueOrDefault(name) + StatCpuSeconds(stat);
                }
                catch (IOException)
                {
                }
            }
        }
        catch (IOException)
        {
        }
        return byName;
    }

    /// <summary>The CPU seconds each thread name used between two <see cref="ThreadCpuSeconds"/> samples, largest first.</summary>
    public static string ThreadCpuDelta(Dictionary<string, double> before, Dictionary<string, double> after, TimeSpan wall) =>
        string.Join(", ", after.Select(a => (a.Key, Seconds: a.Value - before.GetValueOrDefault(a.Key)))
            .Where(d => d.Seconds >= 0.05).OrderByDescending(d => d.Seconds)
            .Select(d => string.Create(CultureInfo.InvariantCulture, $"{d.Key.Trim()} {d.Seconds / wall.TotalSeconds:P0}")));

    public void Signal(int signal) => _ = Kill(Process.Id, signal);

    private void Keep(string? line)
    {
        if (line is null) return;
        lock (_log)
        {
            _log.Add(line);
            if (_log.Count > 50) _log.RemoveAt(0);
        }
    }

    private string Tail()
    {
        lock (_log) return string.Join(Environment.NewLine, _log);
    }

    public async ValueTask DisposeAsync()
    {
        if (!Process.HasExited)
        {
            Signal(15);
            try
            {
                await Process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(40));
            }
            catch (TimeoutException)
            {
                Process.Kill(entireProcessTree: true);
            }
        }
        Process.Dispose();
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
