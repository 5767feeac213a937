using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;
using XRay.Model;
using XRay.Model.Training;

namespace XRay.Train;

/// <summary><c>train</c>: fits a network on labelled images with a fixed schedule; writes checkpoints as it goes.</summary>
internal static class TrainCommand
{
    public static Command Create(TextWriter output, TextWriter error, string[] args)
    {
        var data = new DataOptions();
        var outDir = new Option<string>("--out") { Description = "Output folder: model/ (final checkpoint), best/ (best validation epoch), resume/.", Required = true };
        var resume = new Option<bool>("--resume") { Description = "Continue the run in --out from its last finished epoch (same options and data)." };
        var name = new Option<string?>("--name") { Description = "Model name in the manifest." };
        var version = new Option<string>("--model-version") { Description = "Model version in the manifest.", DefaultValueFactory = _ => "1.0.0" };
        var description = new Option<string?>("--description") { Description = "Manifest description (\"Not for clinical use.\" is always appended)." };

        var command = new Command("train", "Train a multi-label classifier (masked BCE-with-logits, AdamW, warm-up + cosine, augmentation), validating each epoch.")
        {
            outDir, resume, name, version, description,
        };
        var training = new TrainingOptionSet();
        training.AddTo(command);
        var probe = new ProbeOptionSet();
        probe.AddTo(command);
        data.AddTo(command);
        command.SetAction((result, ct) => TrainApp.Guard(error, () =>
        {
            var source = data.From(result) ?? throw new ArgumentException("Give the data: --nih-csv, --csv or --synthetic.");
            var (options, spec) = training.From(result);
            var probeSettings = probe.From(result, options);
            if (probeSettings.Enabled && result.GetValue(resume))
            {
                throw new ArgumentException("--resume continues a network trained epoch by epoch; a probe on cached features has nothing to resume (use --full-network).");
            }

            return Task.FromResult(Run(TrainApp.Console(output), args, source, options, spec, result.GetValue(outDir)!, result.GetValue(resume),
                result.GetValue(name), result.GetValue(version)!, result.GetValue(description), probeSettings, ct));
        }));
        return command;
    }

    private static int Run(
        IAnsiConsole console,
        string[] args,
        DataSource source,
        TrainingOptions options,
        PreprocessingSpec spec,
        string outDir,
        bool resume,
        string? name,
        string version,
        string? description,
        ProbeSettings probe,
        CancellationToken ct)
    {
        console.MarkupLine($"[grey]allocator: {Markup.Escape(XRay.Model.NativeAllocator.Describe())}; libtorch threads: {TorchSharp.torch.get_num_threads()}[/]");
        using var sets = source.Load(spec, message => console.MarkupLine($"[grey]{Markup.Escape(message)}[/]"));
        console.MarkupLine($"split by patient (seed {source.Split.Seed}): {sets.Train.Count} train, {sets.Validation.Count} validation, {sets.Test.Count} test images");
        if (sets.Train.Count < 2)
        {
            throw new ArgumentException("Fewer than 2 training images after the split.");
        }

        var classes = sets.Train.ClassNames;
        var positives = new JsonObject();
        for (var c = 0; c < classes.Count; c++)
        {
            positives[classes[c]] = Math.Round(sets.Train.ClassLabels(c).Where(v => !float.IsNaN(v)).Sum(), 2);
        }

        var dataDescription = source.Describe();
        var manifest = new ModelManifest
        {
            Name = name ?? $"xray-{options.Architecture.Replace('_', '-')}-{source.Kind}",
            Version = version,
            Architecture = options.Architecture,
            ClassNames = classes,
            Preprocessing = spec,
            // From the bundled ImageNet file, the checkpoint stores only what training changed (a probe: just the head).
            BaseWeights = options.InitialWeights == XRay.Model.Onnx.CntkResNetImporter.BundledBackbone ? ModelManifest.BaseWeightsImageNetCntk : null,
            Description = WithDisclaimer(description ??
                $"{options.Architecture} {(options.InitialWeights is null ? "trained from scratch" : $"fine-tuned from {Path.GetFileName(options.InitialWeights.TrimEnd('/'))}")} by xray-train on {dataDescription} " +
                $"({sets.Train.Count} training images, patient-level split)."),
            Training = new JsonObject
            {
                ["tool"] = "xray-train train",
                ["command"] = "xray-train " + string.Join(' ', args.Select(Quote)),
                ["data"] = source.ToJson(),
                ["dataDescription"] = dataDescription,
                ["splitImages"] = new JsonObject { ["train"] = sets.Train.Count, ["validation"] = sets.Validation.Count, ["test"] = sets.Test.Count },
                ["trainPositives"] = positives,
                ["trainedAt"] = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
            },
        };

        if (probe.Enabled)
        {
            return RunProbe(console, sets, options, spec, manifest, probe, outDir, ct);
        }

        TrainingResult? trained = null;
        var progress = console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn());
        progress.Start(context =>
        {
            var task = context.AddTask("starting", maxValue: options.Epochs);
            var trainer = new Trainer(options)
            {
                OnStep = s =>
                {
                    task.Value = s.Epoch - 1 + (double)s.Step / s.StepsPerEpoch;
                    task.Description = $"epoch {s.Epoch}/{s.Epochs}  loss {s.Loss:F4}  {s.ImagesPerSecond:F0} img/s  lr {s.LearningRate:G2}";
                },
                OnEpoch = e =>
                {
                    var validation = double.IsNaN(e.ValidationMeanAuroc) ? "" : $"  val mean AUROC {e.ValidationMeanAuroc:F3}";
                    console.MarkupLine(Markup.Escape($"epoch {e.Epoch,3}: train loss {e.TrainLoss:F4}{validation}  ({e.ImagesPerSecond:F0} img/s, {e.Seconds:F1} s)"));
                    if (e.ValidationAuroc.Count > 0)
                    {
                        var perClass = e.ValidationAuroc.Select((a, c) => $"{Abbreviate(classes[c])} {(double.IsNaN(a) ? "n/a" : a.ToString("F2", CultureInfo.InvariantCulture))}");
                        console.MarkupLine($"[grey]           val AUROC: {Markup.Escape(string.Join("  ", perClass))}[/]");
                    }
                },
            };
            trained = trainer.Train(sets.Train, sets.Validation.Count > 0 ? sets.Validation : null, manifest, outDir, resume, ct);
            task.Value = options.Epochs;
        });

        using var result = trained!;
        if (result.History.Count > 0 && result.History[^1].ValidationAuroc.Count > 0)
        {
            var table = new Table().AddColumn("class").AddColumn(new TableColumn("val AUROC (last epoch)").RightAligned());
            for (var c = 0; c < classes.Count; c++)
            {
                var v = result.History[^1].ValidationAuroc[c];
                table.AddRow(Markup.Escape(classes[c]), double.IsNaN(v) ? "n/a" : v.ToString("F3", CultureInfo.InvariantCulture));
            }

            console.Write(table);
        }

        console.MarkupLine($"final checkpoint (fixed schedule): [bold]{Markup.Escape(Path.Combine(outDir, Trainer.ModelFolder))}[/]" +
            (result.BestEpoch > 0 ? $"; best validation epoch {result.BestEpoch} in {Markup.Escape(Path.Combine(outDir, Trainer.BestFolder))}" : ""));
        console.MarkupLine($"next: [grey]xray-train evaluate --model {Markup.Escape(Path.Combine(outDir, Trainer.ModelFolder))} --report {Markup.Escape(Path.Combine(outDir, "report"))} --write-thresholds[/]");
        return 0;
    }

    /// <summary>A linear probe on cached backbone features: one head per seed, averaged, saved as <c>--out/model</c>.</summary>
    private static int RunProbe(IAnsiConsole console, SplitSets sets, TrainingOptions options, PreprocessingSpec spec, ModelManifest manifest,
        ProbeSettings probe, string outDir, CancellationToken ct)
    {
        void Log(string message) => console.MarkupLine($"[grey]{Markup.Escape(message)}[/]");
        var classes = sets.Train.ClassNames;
        var network = InitialWeights.Create(options.InitialWeights!, options.Architecture, classes, null);
        try
        {
            var (trainingFeatures, _) = LinearProbe.Features(network, sets.Train, spec, options, probe.Views, probe.Cache, Log, ct);
            var watch = System.Diagnostics.Stopwatch.StartNew();
            var head = LinearProbe.TrainAveraged(trainingFeatures, sets.Train.Labels, classes.Count, options, probe.Seeds, ct);
            console.MarkupLine($"{probe.Seeds.Count} head(s) trained in {watch.Elapsed.TotalSeconds:F1} s and averaged into one");
            LinearProbe.SetHead(network, options.Architecture, head);
            network.eval();
            var training = manifest.Training!.DeepClone().AsObject();
            training["options"] = JsonSerializer.SerializeToNode(options, Trainer.JsonOptions);
            training["probe"] = new JsonObject
            {
                ["seeds"] = new JsonArray(probe.Seeds.Select(s => (JsonNode)s).ToArray()),
                ["augmentedViews"] = options.Augmentation.Enabled ? probe.Views : 0,
                ["method"] = "linear heads trained on backbone features computed once per image (and view), one per seed, averaged into one head",
            };
            training["trainImages"] = sets.Train.Count;
            training["validationImages"] = sets.Validation.Count;
            training["checkpoint"] = $"average of {probe.Seeds.Count} linear-probe head(s), each at the end of the fixed schedule";
            var final = manifest with { Training = training };
            if (sets.Validation.Count > 0)
            {
                using var normalizer = new Normalizer(spec);
                var auroc = Trainer.PerClassAuroc(sets.Validation, Trainer.PredictLogits(network, sets.Validation, normalizer));
                console.MarkupLine($"validation mean AUROC {Trainer.MeanDefined(auroc):F3} ({sets.Validation.Count} images)");
            }

            var modelDir = Path.Combine(outDir, Trainer.ModelFolder);
            Checkpoint.Save(modelDir, final, network);
            console.MarkupLine($"checkpoint: [bold]{Markup.Escape(modelDir)}[/]");
            console.MarkupLine($"next: [grey]xray-train calibrate --predictions CROSSVAL_REPORT/oof.csv --model {Markup.Escape(modelDir)} --write[/]");
            return 0;
        }
        finally
        {
            network.Dispose();
        }
    }

    private static string Abbreviate(string name) => name.Length <= 6 ? name : name[..5] + ".";

    internal static string WithDisclaimer(string description) =>
        description.Contains("not for clinical use", StringComparison.OrdinalIgnoreCase) ? description : $"{description.TrimEnd()} Not for clinical use.";

    private static string Quote(string arg) => arg.Length > 0 && arg.All(ch => char.IsLetterOrDigit(ch) || "-_./=:,".Contains(ch)) ? arg : $"'{arg}'";
}

/// <summary>The training options shared by <c>train</c> and <c>crossval</c>.</summary>
internal sealed class TrainingOptionSet
{
    private readonly Option<string> _arch = new("--arch") { Description = string.Join(", ", Architectures.Names) + ".", DefaultValueFactory = _ => Architectures.SmallCnn };
    private readonly Option<int> _epochs = new("--epochs") { Description = "Epochs (fixed schedule).", DefaultValueFactory = _ => 30 };
    private readonly Option<int> _batch = new("--batch-size") { Description = "Images per step.", DefaultValueFactory = _ => 32 };
    private readonly Option<double> _lr = new("--lr") { Description = "Peak learning rate (AdamW; linear warm-up, cosine decay).", DefaultValueFactory = _ => 1e-3 };
    private readonly Option<double> _weightDecay = new("--weight-decay") { Description = "AdamW weight decay.", DefaultValueFactory = _ => 1e-2 };
    private readonly Option<double> _warmup = new("--warmup-epochs") { Description = "Epochs of linear warm-up.", DefaultValueFactory = _ => 1 };
    private readonly Option<int> _seed = new("--seed") { Description = "Seed of initial weights, shuffling and augmentation.", DefaultValueFactory = _ => 1 };
    private readonly Option<PosWeightMode> _posWeight = new("--pos-weight") { Description = "none, or balanced (negatives/positives per class, capped at 100).", DefaultValueFactory = _ => PosWeightMode.None };
    private readonly Option<bool> _noAugment = new("--no-augment") { Description = "Train without augmentation." };
    private readonly Option<bool> _hflip = new("--hflip") { Description = "Also mirror left-right (off by default: anatomy is not symmetric)." };
    private readonly Option<int> _imageSize = new("--image-size") { Description = "Network input size (centre crop), pixels.", DefaultValueFactory = _ => 224 };
    private readonly Option<int?> _resize = new("--resize") { Description = "Shorter side before the crop (default: --image-size)." };
    private readonly Option<string?> _init = new("--init")
    {
        Description = "Start from these weights: 'imagenet' (CNTK's ImageNet ResNet-18 from the NuGet package; --arch resnet18_cntk or resnet18_cntk_gray), " +
            "a ResNet18.onnx path, or a checkpoint folder of the same architecture. Default: from scratch.",
    };
    private readonly Option<int> _frozenEpochs = new("--frozen-epochs") { Description = "First epochs training only the head (backbone frozen, batch norm fixed); = --epochs is a linear probe.", DefaultValueFactory = _ => 0 };
    private readonly Option<double> _backboneLrFactor = new("--backbone-lr-factor") { Description = "Backbone learning rate as a fraction of the head's once unfrozen.", DefaultValueFactory = _ => 1.0 };
    private readonly Option<bool> _freezeBn = new("--freeze-bn-stats") { Description = "Keep batch-norm running statistics fixed in every epoch (fine-tuning on small batches)." };
    private readonly Option<int> _threads = new("--threads") { Description = "libtorch threads (0: libtorch's default, one per core).", DefaultValueFactory = _ => 0 };

    public void AddTo(Command command)
    {
        foreach (var option in new Option[] { _arch, _epochs, _batch, _lr, _weightDecay, _warmup, _seed, _posWeight, _noAugment, _hflip, _imageSize, _resize, _init, _frozenEpochs, _backboneLrFactor, _freezeBn, _threads })
        {
            command.Options.Add(option);
        }
    }

    /// <summary>Validated options and preprocessing; applies --threads.</summary>
    public (TrainingOptions Options, PreprocessingSpec Spec) From(ParseResult result)
    {
        if (result.GetValue(_threads) is > 0 and var n)
        {
            TorchSharp.torch.set_num_threads(n);
        }

        var options = new TrainingOptions
        {
            Architecture = result.GetValue(_arch)!,
            Epochs = result.GetValue(_epochs),
            BatchSize = result.GetValue(_batch),
            LearningRate = result.GetValue(_lr),
            WeightDecay = result.GetValue(_weightDecay),
            WarmupEpochs = result.GetValue(_warmup),
            Seed = result.GetValue(_seed),
            PosWeight = result.GetValue(_posWeight),
            Augmentation = result.GetValue(_noAugment) ? AugmentationOptions.None : new AugmentationOptions { HorizontalFlip = result.GetValue(_hflip) },
            InitialWeights = result.GetValue(_init) switch
            {
                null or "" => null,
                // The ResNet18.onnx the build copied beside this tool.
                "imagenet" => XRay.Model.Onnx.CntkResNetImporter.BundledBackbone,
                var path => Path.GetFullPath(path),
            },
            FrozenEpochs = result.GetValue(_frozenEpochs),
            BackboneLearningRateFactor = result.GetValue(_backboneLrFactor),
            FreezeBatchNormStatistics = result.GetValue(_freezeBn),
        };
        options.Validate();
        var size = result.GetValue(_imageSize);
        var spec = Architectures.DefaultPreprocessing(options.Architecture, size, result.GetValue(_resize));
        spec.Validate();
        return (options, spec);
    }
}
