using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Spectre.Console;
using XRay.Model;
using XRay.Model.Training;
using static TorchSharp.torch;

namespace XRay.Train;

/// <summary>
/// <c>benchmark</c>: training images/s per architecture (a few AdamW steps), inference images/s per batch size through
/// <see cref="ModelRunner"/> in fp32 and bf16 and <see cref="OnnxRuntimeRunner"/> in fp32, and bf16's largest
/// probability change against fp32 on real images.
/// </summary>
internal static class BenchmarkCommand
{
    public static Command Create(TextWriter output, TextWriter error)
    {
        var trainArchs = new Option<string>("--train-archs") { Description = "Architectures for training throughput ('' skips).", DefaultValueFactory = _ => "small_cnn,resnet18,densenet121" };
        var trainBatch = new Option<int>("--train-batch") { Description = "Training batch size.", DefaultValueFactory = _ => 16 };
        var trainSteps = new Option<int>("--train-steps") { Description = "Timed training steps (after 2 untimed).", DefaultValueFactory = _ => 5 };
        var inferArchs = new Option<string>("--infer-archs") { Description = "Architectures for inference throughput ('' skips).", DefaultValueFactory = _ => "resnet18,densenet121" };
        var batches = new Option<string>("--batches") { Description = "Inference batch sizes.", DefaultValueFactory = _ => "1,8,32" };
        var seconds = new Option<double>("--seconds") { Description = "Timed seconds per inference configuration.", DefaultValueFactory = _ => 4 };
        var images = new Option<string?>("--images") { Description = "Folder of real images for the bf16 accuracy check (default: shared/data/nih-cxr14-sample/images above here)." };
        var deltaImages = new Option<int>("--delta-images") { Description = "Images for the bf16 accuracy check.", DefaultValueFactory = _ => 64 };
        var command = new Command("benchmark", "Training and inference throughput per architecture; bf16 vs fp32 speed and max |Δprobability|.")
        {
            trainArchs, trainBatch, trainSteps, inferArchs, batches, seconds, images, deltaImages,
        };
        command.SetAction((result, ct) => TrainApp.Guard(error, async () =>
        {
            var console = TrainApp.Console(output);
            console.MarkupLine($"[grey]allocator: {Markup.Escape(XRay.Model.NativeAllocator.Describe())}; libtorch threads: {get_num_threads()}; {Environment.ProcessorCount} cores[/]");
            var training = new Table().AddColumns("architecture", "batch", "train images/s");
            foreach (var arch in List(result.GetValue(trainArchs)!))
            {
                ct.ThrowIfCancellationRequested();
                var ips = TrainingThroughput(arch, result.GetValue(trainBatch), result.GetValue(trainSteps));
                training.AddRow(arch, $"{result.GetValue(trainBatch)}", F(ips));
                console.MarkupLine($"[grey]train {arch}: {F(ips)} images/s[/]");
            }

            console.Write(training);
            var sizes = List(result.GetValue(batches)!).Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            string[] configurations = ["torch fp32", "torch bf16", "onnxruntime fp32"];
            var inference = new Table().AddColumns(["architecture", .. sizes.SelectMany(b => configurations.Select(c => $"{c} b{b}")), "bf16/fp32 at largest", "onnxruntime/torch fp32 at largest"]);
            var realImages = LoadImages(result.GetValue(images), result.GetValue(deltaImages));
            var deltas = new Table().AddColumns("model", "images", "max |Δp| bf16 vs fp32", "mean |Δp|");
            foreach (var arch in List(result.GetValue(inferArchs)!))
            {
                var row = new List<string> { arch };
                var perConfiguration = new Dictionary<string, double[]>();
                foreach (var configuration in configurations)
                {
                    var (runtime, precision) = (configuration.Split(' ')[0], configuration.Split(' ')[1]);
                    perConfiguration[configuration] = await InferenceThroughputAsync(arch, runtime, precision, sizes, result.GetValue(seconds), ct);
                }

                for (var i = 0; i < sizes.Length; i++)
                {
                    row.AddRange(configurations.Select(c => F(perConfiguration[c][i])));
                }

                row.Add($"{perConfiguration["torch bf16"][^1] / perConfiguration["torch fp32"][^1]:F2}x");
                row.Add($"{perConfiguration["onnxruntime fp32"][^1] / perConfiguration["torch fp32"][^1]:F2}x");
                inference.AddRow(row.ToArray());
                console.MarkupLine($"[grey]infer {arch}: {string.Join(", ", sizes.Select((b, i) => $"b{b} {string.Join("/", configurations.Select(c => F(perConfiguration[c][i])))}"))} ({string.Join("/", configurations)})[/]");
                if (realImages is not null)
                {
                    var (max, mean) = await Bf16DeltaAsync(() => Recalibrated(SeededModel(arch), realImages), realImages, ct);
                    deltas.AddRow($"{arch} (seeded random weights, batch-norm statistics from the images)", $"{realImages.Count}", $"{max:G3}", $"{mean:G3}");
                }
            }

            console.Write(inference);
            if (realImages is not null)
            {
                var (max, mean) = await Bf16DeltaAsync(DefaultModel.Create, realImages, ct);
                deltas.AddRow("default (bundled, trained)", $"{realImages.Count}", $"{max:G3}", $"{mean:G3}");
                console.Write(deltas);
            }
            else
            {
                console.MarkupLine("[yellow]no real images found: bf16 accuracy check skipped (--images DIR)[/]");
            }

            return 0;
        }));
        return command;
    }

    private static double TrainingThroughput(string arch, int batch, int steps)
    {
        using var enable = enable_grad();
        manual_seed(1);
        using var network = Architectures.Create(arch, 14);
        network.train();
        var optimizer = optim.AdamW(network.parameters(), lr: 1e-4);
        using var input = randn(batch, Architectures.InputChannels(arch), 224, 224);
        using var targets = randint(0, 2, [batch, 14]).to_type(ScalarType.Float32);
        using var mask = ones(batch, 14);
        var watch = new Stopwatch();
        for (var step = 0; step < steps + 2; step++)
        {
            if (step == 2)
            {
                watch.Start();
            }

            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            var loss = MaskedBceLoss.Compute(network.call(input), targets, mask);
            loss.backward();
            optimizer.step();
        }

        return batch * steps / watch.Elapsed.TotalSeconds;
    }

    private static LoadedModel SeededModel(string arch)
    {
        manual_seed(1);
        var network = Architectures.Create(arch, 14);
        network.eval();
        return new LoadedModel(
            new ModelManifest
            {
                Name = $"bench-{arch}", Version = "0", Architecture = arch, ClassNames = ChestXrayFindings.Nih14,
                Preprocessing = Architectures.DefaultPreprocessing(arch),
            },
            network);
    }

    /// <summary>
    /// An untrained network's batch-norm buffers (mean 0, variance 1) let activations grow through 121 layers until
    /// every sigmoid saturates, which would hide any bf16 error; one forward in training mode with momentum 1 sets
    /// them to the statistics of real images, as a trained network's would be.
    /// </summary>
    private static LoadedModel Recalibrated(LoadedModel model, ImageSet images)
    {
        foreach (var module in model.Network.modules())
        {
            if (module is TorchSharp.Modules.BatchNorm2d norm)
            {
                norm.momentum = 1.0;
            }
        }

        using (no_grad())
        using (var scope = NewDisposeScope())
        using (var normalizer = new Normalizer(model.Manifest.Preprocessing))
        {
            model.Network.train();
            model.Network.call(normalizer.Apply(images.Planes.narrow(0, 0, Math.Min(32, images.Count))));
            model.Network.eval();
        }

        return model;
    }

    private static async Task<double[]> InferenceThroughputAsync(string arch, string runtime, string precision, int[] sizes, double seconds, CancellationToken ct)
    {
        using var model = SeededModel(arch);
        var options = new RunnerOptions { Device = "cpu", Precision = precision };
        using IInferenceRunner runner = InferenceRuntimes.Create(model, runtime, options);
        var result = new double[sizes.Length];
        for (var i = 0; i < sizes.Length; i++)
        {
            var input = new float[sizes[i] * runner.InputLength];
            for (var k = 0; k < input.Length; k++)
            {
                input[k] = (k % 97) / 48f - 1f;
            }

            await runner.WarmUpAsync([sizes[i]], ct);
            await runner.RunAsync(input, sizes[i], ct);
            var watch = Stopwatch.StartNew();
            var done = 0;
            while (watch.Elapsed.TotalSeconds < seconds || done < 3 * sizes[i])
            {
                await runner.RunAsync(input, sizes[i], ct);
                done += sizes[i];
            }

            result[i] = done / watch.Elapsed.TotalSeconds;
        }

        return result;
    }

    private static async Task<(double Max, double Mean)> Bf16DeltaAsync(Func<LoadedModel> create, ImageSet images, CancellationToken ct)
    {
        float[] fp32, bf16;
        using (var model = create())
        using (var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu", Precision = "fp32" }))
        {
            fp32 = await EvaluateCommand.PredictAsync(runner, images, model.Manifest, ct);
        }

        using (var model = create())
        using (var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu", Precision = "bf16" }))
        {
            bf16 = await EvaluateCommand.PredictAsync(runner, images, model.Manifest, ct);
        }

        var deltas = fp32.Zip(bf16, (a, b) => (double)Math.Abs(a - b)).ToArray();
        return (deltas.Max(), deltas.Average());
    }

    private static ImageSet? LoadImages(string? folder, int count)
    {
        folder ??= FindUp(Path.Combine("shared", "data", "nih-cxr14-sample", "images"));
        if (folder is null || !Directory.Exists(folder))
        {
            return null;
        }

        var files = Directory.GetFiles(folder, "*.png").Order(StringComparer.Ordinal).Take(count)
            .Select(f => new LabeledImage(f, Path.GetFileName(f), new float[1])).ToArray();
        return files.Length == 0 ? null : ImageSet.Load(new LabeledDataset(["any"], files, folder), new PreprocessingSpec());
    }

    private static string? FindUp(string relative)
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, relative);
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private static string[] List(string value) => value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);

    private static string F(double v) => v.ToString(v < 10 ? "F2" : "F1", CultureInfo.InvariantCulture);
}
