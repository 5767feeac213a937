using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using XRay.Model;

namespace XRay.Train;

/// <summary>
/// <c>raw-benchmark</c>: the model's forward time per batch size with nothing around it, through the same runner
/// (<see cref="ModelRunner"/> or <see cref="XRay.Model.Onnx.OnnxRuntimeRunner"/>, one inference thread) the server runs it with. Writes one JSON document
/// to stdout (every forward's time, the model, the allocator, the preprocessing) and progress lines to stderr.
/// <c>xray-loadtest bench</c> runs it as a child process, so the load tester itself carries no libtorch.
/// </summary>
internal static class RawBenchmarkCommand
{
    internal static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };

    public static Command Create(TextWriter output, TextWriter error)
    {
        var model = new Option<string?>("--model") { Description = "Checkpoint folder (default: the built-in default model)." };
        var architecture = new Option<string?>("--architecture") { Description = $"Instead of a checkpoint: an untrained network of this architecture ({string.Join(", ", Architectures.Names)}) with random weights." };
        var save = new Option<string?>("--save-checkpoint") { Description = "With --architecture: save the random-weight checkpoint to this folder (to serve the same network)." };
        var device = new Option<string>("--device") { Description = "auto, cpu or cuda.", DefaultValueFactory = _ => "auto" };
        var precision = new Option<string>("--precision") { Description = "fp32 or bf16.", DefaultValueFactory = _ => "fp32" };
        var runtime = new Option<string>("--runtime") { Description = "torch, onnxruntime or auto (as the server picks: onnxruntime for fp32, torch for bf16).", DefaultValueFactory = _ => InferenceRuntimes.Torch };
        var batches = new Option<string>("--batch-sizes") { Description = "Batch sizes to measure.", DefaultValueFactory = _ => "1,2,4,8,16,32" };
        var seconds = new Option<double>("--seconds") { Description = "Seconds of forwards per batch size, at least.", DefaultValueFactory = _ => 3 };
        var iterations = new Option<int>("--iterations") { Description = "Forwards per batch size, at least (after two warm-up forwards).", DefaultValueFactory = _ => 3 };
        var command = new Command("raw-benchmark", "Forward times per batch size through ModelRunner, as JSON on stdout (what xray-loadtest bench reads).")
        {
            model, architecture, save, device, precision, runtime, batches, seconds, iterations,
        };
        command.SetAction((result, ct) => TrainApp.Guard(error, async () =>
        {
            int[] sizes = result.GetValue(batches)!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            if (sizes.Length == 0 || sizes.Any(s => s is < 1 or > 4096)) throw new ArgumentException("--batch-sizes must be sizes in [1, 4096].");
            string? path = result.GetValue(model);
            if (result.GetValue(architecture) is { } arch)
            {
                if (path is not null) throw new ArgumentException("give --model or --architecture, not both.");
                path = result.GetValue(save) ?? throw new ArgumentException("--architecture needs --save-checkpoint DIR.");
                SaveRandomCheckpoint(arch, path);
                error.WriteLine($"random-weight {arch} checkpoint in {path}");
            }

            using LoadedModel loaded = string.IsNullOrEmpty(path) ? DefaultModel.Create() : Checkpoint.Load(path);
            using IInferenceRunner runner = InferenceRuntimes.Create(loaded, result.GetValue(runtime)!,
                new RunnerOptions { Device = result.GetValue(device)!, Precision = result.GetValue(precision)!, Workers = 1 });
            var points = new List<RawForwards>();
            foreach (int size in sizes)
            {
                points.Add(await MeasureAsync(runner, size, result.GetValue(seconds), result.GetValue(iterations), ct));
                RawForwards p = points[^1];
                error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"raw batch {size,3}: {size * p.ForwardUs.Length / p.Seconds,9:F1} img/s ({p.ForwardUs.Length} forwards)"));
            }

            ModelManifest manifest = loaded.Manifest;
            PreprocessingSpec pre = manifest.Preprocessing;
            var report = new RawBenchmarkReport(
                new RawModel(manifest.Name, manifest.Version, manifest.Architecture, runner.Runtime, runner.Device, runner.Precision),
                NativeAllocator.Describe(),
                new RawPreprocessing(pre.ResizeSize, pre.CropSize, [.. pre.Mean], [.. pre.Std], pre.Color),
                points);
            output.WriteLine(JsonSerializer.Serialize(report, JsonOptions));
            return 0;
        }));
        return command;
    }

    /// <summary>An untrained network with the default preprocessing and the 14 NIH findings.</summary>
    internal static void SaveRandomCheckpoint(string architecture, string directory)
    {
        var manifest = new ModelManifest
        {
            Name = $"random-{architecture}",
            Version = "0.0.0",
            Architecture = architecture,
            ClassNames = ChestXrayFindings.Nih14,
            Preprocessing = Architectures.DefaultPreprocessing(architecture),
            Description = "UNTRAINED: random weights, for benchmarking speed only.",
        };
        using var network = Architectures.Create(architecture, manifest.ClassNames.Count);
        Checkpoint.Save(directory, manifest, network);
    }

    /// <param name="minSeconds">Forwards continue until this long has passed...</param>
    /// <param name="minIterations">...and at least this many have run (after two warm-up forwards).</param>
    private static async Task<RawForwards> MeasureAsync(IInferenceRunner runner, int batchSize, double minSeconds, int minIterations, CancellationToken cancellationToken)
    {
        var random = new Random(1);
        var input = new float[batchSize * runner.InputLength];
        for (int i = 0; i < input.Length; i++) input[i] = (float)(random.NextDouble() * 4 - 2);

        // The first forward of a shape builds oneDNN primitives: not part of the steady state.
        for (int i = 0; i < 2; i++) await runner.RunAsync(input, batchSize, cancellationToken).ConfigureAwait(false);

        var forwards = new List<long>();
        long start = Stopwatch.GetTimestamp();
        while (forwards.Count < minIterations || Stopwatch.GetElapsedTime(start).TotalSeconds < minSeconds)
        {
            long before = Stopwatch.GetTimestamp();
            await runner.RunAsync(input, batchSize, cancellationToken).ConfigureAwait(false);
            forwards.Add((long)Stopwatch.GetElapsedTime(before).TotalMicroseconds);
        }
        return new RawForwards(batchSize, Stopwatch.GetElapsedTime(start).TotalSeconds, [.. forwards]);
    }
}

/// <summary>What <c>raw-benchmark</c> writes (snake_case JSON).</summary>
internal sealed record RawBenchmarkReport(RawModel Model, string Allocator, RawPreprocessing Preprocessing, IReadOnlyList<RawForwards> Points);

internal sealed record RawModel(string Name, string Version, string Architecture, string Runtime, string Device, string Precision);

internal sealed record RawPreprocessing(int ResizeSize, int CropSize, float[] Mean, float[] Std, string Color);

/// <summary>One batch size: every timed forward in microseconds, and the seconds they took together.</summary>
internal sealed record RawForwards(int BatchSize, double Seconds, long[] ForwardUs);
