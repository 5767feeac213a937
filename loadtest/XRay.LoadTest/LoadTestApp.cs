using System.CommandLine;
using System.Globalization;
using Grpc.Core;
using Spectre.Console;
using XRay.Cli;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.LoadTest.Bench;
using XRay.LoadTest.Load;
using XRay.LoadTest.Payloads;
using XRay.LoadTest.Reports;
using XRay.LoadTest.Statistics;

namespace XRay.LoadTest;

/// <summary>The <c>xray-loadtest</c> command line: <c>run</c>, <c>sweep</c> and <c>bench</c>.</summary>
public static class LoadTestApp
{
    public const string DefaultTarget = "http://127.0.0.1:5051";

    public static Task<int> RunAsync(string[] args, TextWriter output, TextWriter error, bool interactive = false)
    {
        var runOptions = new SharedOptions(concurrencyDefault: 8, durationDefault: 10, warmupDefault: 2);
        var run = new Command("run", "Apply one load level and report latency, throughput, errors, the server's batching and CPU use.");
        runOptions.AddTo(run, withTarget: true);
        run.SetAction((result, ct) => Guard(error, string.Join(",", runOptions.Targets(result)), () => RunCommandAsync(result, runOptions, args, output, error, interactive, ct)));

        var levels = new Option<string>("--levels")
        {
            Description = "Load levels: concurrencies (closed loop) or rates in requests/s (open loop), e.g. 1,2,4,8,16,32.",
            DefaultValueFactory = _ => "1,2,4,8,16,32,64",
        };
        var sloPercentile = new Option<double>("--slo-percentile") { Description = "Latency percentile the threshold applies to: 50, 90, 95, 99 or 99.9.", DefaultValueFactory = _ => 99 };
        var sloMs = new Option<double>("--slo-ms") { Description = "Stop once that percentile exceeds this many milliseconds.", DefaultValueFactory = _ => 1000 };
        var maxErrorRate = new Option<double>("--max-error-rate") { Description = "Stop once more than this fraction of requests fails.", DefaultValueFactory = _ => 0.01 };
        var sweep = new Command("sweep", "Raise the load level by level (concurrency or rate) until a latency threshold or error rate is crossed.")
        {
            levels, sloPercentile, sloMs, maxErrorRate,
        };
        var sweepOptions = new SharedOptions(concurrencyDefault: 8, durationDefault: 10, warmupDefault: 2);
        sweepOptions.AddTo(sweep, withTarget: true);
        sweep.SetAction((result, ct) => Guard(error, string.Join(",", sweepOptions.Targets(result)), () => SweepCommandAsync(result, sweepOptions, args, output, error, interactive,
            result.GetValue(levels)!, result.GetValue(sloPercentile), result.GetValue(sloMs), result.GetValue(maxErrorRate), ct)));

        var bench = BenchCommand(args, output, error, interactive);

        var reportFile = new Argument<FileInfo>("report") { Description = "A report.json written by run, sweep or bench." };
        var renderOut = new Option<string>("--out", "-o") { Description = "Folder for report.md and the PNG plots.", Required = true };
        var render = new Command("render", "Re-render report.md and the PNG plots from a report.json.") { reportFile, renderOut };
        render.SetAction((result, ct) => Guard(error, "", () =>
        {
            LoadTestReport report = LoadTestReport.FromJson(File.ReadAllText(result.GetValue(reportFile)!.FullName));
            return Task.FromResult(Emit(report, result.GetValue(renderOut), output, new PlainPresenter(error), writeJson: false));
        }));

        var root = new RootCommand("XRay Serving load tester: closed- and open-loop load, sweeps, and the batching benchmark. Exit codes: README, \"Exit codes\".")
        {
            run, sweep, bench, render, TransportBench.StallCommand(output), TransportBench.ShutdownCommand(output),
        };
        return ToolCommandLine.InvokeAsync(root, "xray-loadtest", args, output, error);
    }

    private static (string Runtime, string Precision)[] ParseCompare(string? value) =>
        value is null ? [] : value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(pair => pair.Split('/') is [var runtime, var precision] && runtime.Length > 0 && precision.Length > 0
                ? (runtime, precision)
                : throw new ArgumentException($"--compare takes runtime/precision pairs such as onnxruntime/fp32,torch/bf16; got '{pair}'."))
            .ToArray();

    private static Command BenchCommand(string[] args, TextWriter output, TextWriter error, bool interactive)
    {
        var model = new Option<string?>("--model") { Description = "Checkpoint folder (default: the server's built-in default model)." };
        var architecture = new Option<string?>("--architecture") { Description = "Benchmark an untrained network of this architecture (small_cnn, resnet18, resnet50, densenet121, ...) instead of a checkpoint." };
        var device = new Option<string>("--device") { Description = "auto, cpu or cuda, for the raw run and the servers.", DefaultValueFactory = _ => "auto" };
        var precision = new Option<string>("--precision") { Description = "fp32 or bf16.", DefaultValueFactory = _ => "fp32" };
        var runtime = new Option<string>("--runtime") { Description = "auto, torch or onnxruntime, for the raw run and the servers.", DefaultValueFactory = _ => "auto" };
        var compare = new Option<string?>("--compare") { Description = "Runtime/precision pairs measured side by side in this run, e.g. onnxruntime/fp32,torch/fp32,torch/bf16 (overrides --runtime and --precision)." };
        var rawSizes = new Option<string>("--raw-batch-sizes") { Description = "Raw batch sizes to measure.", DefaultValueFactory = _ => "1,2,4,8,16,32" };
        var rawSeconds = new Option<double>("--raw-seconds") { Description = "Seconds of forwards per raw batch size, at least.", DefaultValueFactory = _ => 3 };
        var rawIterations = new Option<int>("--raw-iterations") { Description = "Forwards per raw batch size, at least.", DefaultValueFactory = _ => 3 };
        var maxBatch = new Option<int>("--max-batch-size") { Description = "MaxBatchSize of the batched server started.", DefaultValueFactory = _ => 32 };
        var probe = new Option<double>("--probe-seconds") { Description = "One-caller latency probe on the unbatched server, seconds (0 skips it).", DefaultValueFactory = _ => 5 };
        var serverPath = new Option<string?>("--server-path") { Description = "xray-server binary to start (default: the one built in this repository)." };
        var trainPath = new Option<string?>("--train-path") { Description = "xray-train binary that measures the raw model (default: the one built in this repository)." };
        var serverArgs = new Option<string[]>("--server-arg") { Description = "Extra argument for the servers started (repeat it), e.g. --server-arg=--max-queue-delay-us=2000.", AllowMultipleArgumentsPerToken = false };
        var unbatchedTarget = new Option<string?>("--unbatched-target") { Description = "A running server with MaxBatchSize=1 to use instead of starting one." };
        var batchedTarget = new Option<string?>("--batched-target") { Description = "A running batching server to use instead of starting one." };
        var targetsOnly = new Option<bool>("--targets-only") { Description = "Measure only the servers given as targets; start none." };
        var bench = new Command("bench", "In one run: the raw model per batch size (xray-train raw-benchmark), the server unbatched (MaxBatchSize=1) and batched, same load; with ratios.")
        {
            model, architecture, device, precision, runtime, compare, rawSizes, rawSeconds, rawIterations, maxBatch, probe, serverPath, trainPath, serverArgs, unbatchedTarget, batchedTarget, targetsOnly,
        };
        var o = new SharedOptions(concurrencyDefault: 32, durationDefault: 15, warmupDefault: 5);
        o.AddTo(bench, withTarget: false);
        bench.SetAction((result, ct) => Guard(error, "the server started", async () =>
        {
            LoadProfile profile = o.Profile(result);
            var options = new BenchOptions
            {
                ModelPath = result.GetValue(model),
                Architecture = result.GetValue(architecture),
                Device = result.GetValue(device)!,
                Precision = result.GetValue(precision)!,
                Runtime = result.GetValue(runtime)!,
                Compare = ParseCompare(result.GetValue(compare)),
                RawBatchSizes = ParseList(result.GetValue(rawSizes)!, "--raw-batch-sizes").Select(v => (int)v).ToArray(),
                RawSeconds = result.GetValue(rawSeconds),
                RawIterations = result.GetValue(rawIterations),
                MaxBatchSize = result.GetValue(maxBatch),
                Load = profile,
                ProbeDuration = TimeSpan.FromSeconds(result.GetValue(probe)),
                Payload = o.Payload(result),
                ServerPath = result.GetValue(serverPath),
                TrainPath = result.GetValue(trainPath),
                ServerArguments = result.GetValue(serverArgs) ?? [],
                UnbatchedTarget = result.GetValue(unbatchedTarget),
                BatchedTarget = result.GetValue(batchedTarget),
                TargetsOnly = result.GetValue(targetsOnly),
            };
            var started = DateTimeOffset.UtcNow;
        var machine = MachineInfo.Current();
            IRunPresenter presenter = Presenter(result, o, error, interactive);
            BenchResult bench = await new BenchRunner(options, presenter).RunAsync(ct);
            var report = new LoadTestReport { Kind = "bench", Command = CommandLine(args), StartedUtc = started, Machine = machine, Bench = bench };
            return Emit(report, result.GetValue(o.Out), output, presenter);
        }));
        return bench;
    }

    private static async Task<int> RunCommandAsync(ParseResult result, SharedOptions o, string[] args, TextWriter output, TextWriter error,
        bool interactive, CancellationToken cancellationToken)
    {
        var started = DateTimeOffset.UtcNow;
        var machine = MachineInfo.Current();
        IReadOnlyList<string> targets = o.Targets(result);
        LoadProfile profile = o.Profile(result);
        (ModelInfo info, PayloadPool payloads) = await PrepareAsync(targets, profile.Client, o.Payload(result), cancellationToken);
        IRunPresenter presenter = Presenter(result, o, error, interactive);
        RunResult run = await presenter.RunAsync(new LoadRunner(targets, profile, payloads), profile.Label, cancellationToken);
        var report = new LoadTestReport { Kind = "run", Command = CommandLine(args), StartedUtc = started, Machine = machine, Model = Describe(info), Runs = [run] };
        return Emit(report, result.GetValue(o.Out), output, presenter);
    }

    private static async Task<int> SweepCommandAsync(ParseResult result, SharedOptions o, string[] args, TextWriter output, TextWriter error,
        bool interactive, string levelList, double sloPercentile, double sloMs, double maxErrorRate, CancellationToken cancellationToken)
    {
        var started = DateTimeOffset.UtcNow;
        var machine = MachineInfo.Current();
        IReadOnlyList<string> targets = o.Targets(result);
        // The level fills in the concurrency or the rate; each level's profile is validated when it runs.
        LoadProfile baseProfile = o.Profile(result, validate: false);
        double[] levels = ParseList(levelList, "--levels");
        if (!LatencySummary.ReportedPercentiles.Contains(sloPercentile))
        {
            throw new ArgumentException($"--slo-percentile must be one of {string.Join(", ", LatencySummary.ReportedPercentiles)}; got {sloPercentile}.");
        }
        (ModelInfo info, PayloadPool payloads) = await PrepareAsync(targets, baseProfile.Client, o.Payload(result), cancellationToken);
        IRunPresenter presenter = Presenter(result, o, error, interactive);
        SweepResult sweep = await Sweeper.RunAsync(levels, level => baseProfile.Mode == LoadMode.Closed
                ? baseProfile with { Concurrency = checked((int)level) }
                : baseProfile with { RateRps = level },
            profile => presenter.RunAsync(new LoadRunner(targets, profile, payloads), profile.Label, cancellationToken),
            sloPercentile, sloMs, maxErrorRate, cancellationToken);
        var report = new LoadTestReport
        {
            Kind = "sweep",
            Command = CommandLine(args),
            StartedUtc = started,
            Machine = machine,
            Model = Describe(info),
            Runs = sweep.Runs,
            Sweep = sweep.Outcome with { Over = baseProfile.Mode == LoadMode.Closed ? "concurrency" : "rate" },
        };
        return Emit(report, result.GetValue(o.Out), output, presenter);
    }

    /// <summary>Asks the server for its model (input size, preprocessing) and builds the payloads to match.</summary>
    private static async Task<(ModelInfo, PayloadPool)> PrepareAsync(IReadOnlyList<string> targets, XRayClientOptions credentials,
        PayloadSpec spec, CancellationToken cancellationToken)
    {
        ModelInfo info;
        XRayClientOptions options = credentials.Clone();
        options.MaxAttempts = 1;
        options.Timeout = TimeSpan.FromSeconds(10);
        using (var client = new XRayClassifierClient(targets, options))
        {
            info = await client.GetModelInfoAsync(cancellationToken);
        }
        return (info, PayloadPool.Create(spec, info.Preprocessing));
    }

    private static ServedModelInfo Describe(ModelInfo info) => new()
    {
        Name = info.Name,
        Version = info.Version,
        Architecture = info.Architecture,
        Device = info.Device,
        Precision = info.Precision,
        MaxBatchSize = info.Batching.MaxBatchSize,
        MaxQueueDelayUs = info.Batching.MaxQueueDelayUs,
        ModelInstances = info.Batching.ModelInstances,
    };

    /// <summary>Markdown on stdout; with --out, report.json, report.md and the plots too.</summary>
    private static int Emit(LoadTestReport report, string? outDirectory, TextWriter output, IRunPresenter presenter, bool writeJson = true)
    {
        string markdown = MarkdownReport.Render(report);
        output.WriteLine(markdown);
        if (outDirectory is not null)
        {
            Directory.CreateDirectory(outDirectory);
            if (writeJson) File.WriteAllText(Path.Combine(outDirectory, "report.json"), report.ToJson());
            File.WriteAllText(Path.Combine(outDirectory, "report.md"), markdown);
            IReadOnlyList<string> plots = PlotReport.Write(report, outDirectory);
            presenter.Log($"wrote {string.Join(", ", (writeJson ? new[] { "report.json" } : []).Append("report.md").Concat(plots.Select(Path.GetFileName!)))} in {outDirectory}");
        }
        RunResult? failed = report.Runs.Concat(new[] { report.Bench?.Unbatched?.Run, report.Bench?.Batched?.Run }.OfType<RunResult>())
            .FirstOrDefault(run => run.Requests.Ok == 0 && run.Requests.Sent > 0);
        if (failed is not null)
        {
            presenter.Log($"error: no request of {failed.Label} succeeded ({string.Join(", ", failed.StatusCodes.Select(pair => $"{pair.Key} {pair.Value}"))})");
            return ExitCodes.Refused;
        }
        return ExitCodes.Ok;
    }

    private static IRunPresenter Presenter(ParseResult result, SharedOptions o, TextWriter error, bool interactive) =>
        // The panel goes to stderr, so stdout (the Markdown report) can be redirected.
        interactive && !result.GetValue(o.NoProgress) && !Console.IsErrorRedirected && !Console.IsInputRedirected
            ? new LivePresenter(AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) }))
            : new PlainPresenter(error);

    /// <summary>One line and an exit code (README, "Exit codes") instead of a stack trace for what a user can fix.</summary>
    private static async Task<int> Guard(TextWriter error, string target, Func<Task<int>> action)
    {
        try
        {
            return await action();
        }
        catch (OperationCanceledException)
        {
            error.WriteLine("interrupted");
            return 130;
        }
        catch (Exception ex) when (ToolCommandLine.Describe(ex, target) is { } described)
        {
            error.WriteLine($"error: {described.Message}");
            return described.Code;
        }
        catch (Exception ex) when (ex is InvalidDataException or System.Text.Json.JsonException)
        {
            error.WriteLine($"error: not a report written by xray-loadtest: {ex.Message}");
            return ExitCodes.NotFound;
        }
        catch (IOException ex)
        {
            error.WriteLine($"error: {ex.Message}");
            return ExitCodes.NotFound;
        }
        catch (InvalidOperationException ex)
        {
            // A server or xray-train this tool started failed: its message carries the child's last lines.
            error.WriteLine($"error: {ex.Message}");
            return ExitCodes.Internal;
        }
    }

    internal static double[] ParseList(string text, string option)
    {
        try
        {
            double[] values = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(v => double.Parse(v, NumberStyles.Float, CultureInfo.InvariantCulture)).ToArray();
            if (values.Length == 0 || values.Any(v => !(v > 0))) throw new FormatException();
            return values;
        }
        catch (FormatException)
        {
            throw new ArgumentException($"{option} takes positive numbers separated by commas, e.g. 1,2,4,8; got '{text}'.");
        }
    }

    private static string CommandLine(string[] args) =>
        "xray-loadtest " + string.Join(' ', args.Select(a => a.Contains(' ') ? $"\"{a}\"" : a));

    /// <summary>Options shared by run, sweep and bench; one instance per command, with that command's defaults.</summary>
    private sealed class SharedOptions(int concurrencyDefault, double durationDefault, double warmupDefault)
    {
        public readonly Option<string[]> Target = new("--target", "-t")
        {
            Description = "Server address(es): host:port, http://host:port, https://host:port or dns:///host:port; several (repeat or comma-separate) are balanced round-robin. Default: $XRAY_SERVER or " + DefaultTarget + ".",
            AllowMultipleArgumentsPerToken = true,
        };
        public readonly Option<string> Mode = new("--mode") { Description = "closed (fixed concurrency) or open (arrival rate).", DefaultValueFactory = _ => "closed" };
        public readonly Option<int> Concurrency = new("--concurrency", "-c") { Description = "Closed loop: callers in flight.", DefaultValueFactory = _ => concurrencyDefault };
        public readonly Option<double> Rate = new("--rate", "-r") { Description = "Open loop: requests per second." };
        public readonly Option<string> Arrival = new("--arrival") { Description = "Open loop: constant or poisson.", DefaultValueFactory = _ => "poisson" };
        public readonly Option<double> Duration = new("--duration", "-d") { Description = "Seconds measured after the warm-up.", DefaultValueFactory = _ => durationDefault };
        public readonly Option<long?> Requests = new("--requests", "-n") { Description = "Measure this many requests instead of a duration." };
        public readonly Option<double> Warmup = new("--warmup") { Description = "Seconds of unrecorded load first.", DefaultValueFactory = _ => warmupDefault };
        public readonly Option<int> Connections = new("--connections") { Description = "HTTP/2 connections to spread the load over.", DefaultValueFactory = _ => 1 };
        public readonly Option<string> Api = new("--api") { Description = "unary (Classify) or stream (ClassifyStream, one stream per connection).", DefaultValueFactory = _ => "unary" };
        public readonly Option<double> Timeout = PositiveSeconds(new("--timeout") { Description = "Deadline of each request, seconds.", DefaultValueFactory = _ => 30 });
        public readonly Option<int> MaxInFlight = new("--max-in-flight") { Description = "Open loop: outstanding requests at most; later arrivals are dropped and counted.", DefaultValueFactory = _ => 10_000 };
        public readonly Option<int> Seed = new("--seed") { Description = "Seed for Poisson arrivals and generated payloads.", DefaultValueFactory = _ => 1 };
        public readonly Option<string> PayloadKindOption = new("--payload") { Description = "float32 (normalised tensor), uint8 (0..255 tensor) or png (encoded image).", DefaultValueFactory = _ => "float32" };
        public readonly Option<int> ImagesPerRequest = new("--images-per-request") { Description = "Images in each request.", DefaultValueFactory = _ => 1 };
        public readonly Option<int> Channels = new("--channels") { Description = "Tensor channels: 1 (grayscale) or 3.", DefaultValueFactory = _ => 1 };
        public readonly Option<string[]> Files = new("--files") { Description = "PNG/JPEG files or folders to send (png) or to turn into tensors; default: generated images.", AllowMultipleArgumentsPerToken = true };
        public readonly Option<string?> Out = new("--out", "-o") { Description = "Folder for report.json, report.md and PNG plots." };
        public readonly Option<bool> NoProgress = new("--no-progress") { Description = "No live display; a line per run instead." };
        public readonly CredentialOptions Credentials = new();

        private static Option<double> PositiveSeconds(Option<double> option)
        {
            ToolCommandLine.MustBePositive(option, "seconds");
            return option;
        }

        public void AddTo(Command command, bool withTarget)
        {
            if (withTarget) command.Options.Add(Target);
            foreach (Option option in new Option[] { Mode, Concurrency, Rate, Arrival, Duration, Requests, Warmup, Connections, Api, Timeout, MaxInFlight, Seed, PayloadKindOption, ImagesPerRequest, Channels, Files, Out, NoProgress }.Concat(Credentials.All))
            {
                command.Options.Add(option);
            }
        }

        public IReadOnlyList<string> Targets(ParseResult result)
        {
            string[] given = result.GetValue(Target) ?? [];
            string[] targets = given.SelectMany(t => t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray();
            if (targets.Length > 0) return targets;
            return [Environment.GetEnvironmentVariable("XRAY_SERVER") is { Length: > 0 } env ? env : DefaultTarget];
        }

        public LoadProfile Profile(ParseResult result, bool validate = true)
        {
            LoadMode mode = ParseEnum<LoadMode>(result.GetValue(Mode)!, "--mode");
            var profile = new LoadProfile
            {
                Client = Credentials.ApplyTo(result, new XRayClientOptions()),
                Mode = mode,
                Concurrency = result.GetValue(Concurrency),
                RateRps = result.GetValue(Rate),
                Arrival = ParseEnum<ArrivalKind>(result.GetValue(Arrival)!, "--arrival"),
                Duration = TimeSpan.FromSeconds(result.GetValue(Duration)),
                Requests = result.GetValue(Requests),
                Warmup = TimeSpan.FromSeconds(result.GetValue(Warmup)),
                Connections = result.GetValue(Connections),
                Api = ParseEnum<CallApi>(result.GetValue(Api)!, "--api"),
                Timeout = TimeSpan.FromSeconds(result.GetValue(Timeout)),
                MaxInFlight = result.GetValue(MaxInFlight),
                Seed = result.GetValue(Seed),
            };
            if (validate) profile.Validate();
            return profile;
        }

        public PayloadSpec Payload(ParseResult result)
        {
            var spec = new PayloadSpec
            {
                Kind = ParseEnum<PayloadKind>(result.GetValue(PayloadKindOption)!, "--payload"),
                ImagesPerRequest = result.GetValue(ImagesPerRequest),
                Channels = result.GetValue(Channels),
                Files = result.GetValue(Files) ?? [],
                Seed = result.GetValue(Seed),
            };
            spec.Validate();
            return spec;
        }

        private static T ParseEnum<T>(string value, string option) where T : struct, Enum =>
            Enum.TryParse(value, ignoreCase: true, out T parsed) && Enum.IsDefined(parsed)
                ? parsed
                : throw new ArgumentException($"{option} must be one of {string.Join(", ", Enum.GetNames<T>().Select(n => n.ToLowerInvariant()))}; got '{value}'.");
    }
}
