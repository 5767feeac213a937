using System.CommandLine;
using System.Globalization;
using Spectre.Console;
using XRay.Model;
using XRay.Model.Evaluation;
using XRay.Model.Training;

namespace XRay.Train;

/// <summary>
/// <c>crossval</c>: k-fold cross-validation by patient of a training recipe. Each fold is predicted by a network
/// trained on the other folds with the same fixed schedule; the pooled out-of-fold predictions cover every image
/// once, so per-class AUROC is estimated on the whole data set instead of one small test split.
/// </summary>
internal static class CrossValidateCommand
{
    public static Command Create(TextWriter output, TextWriter error)
    {
        var data = new DataOptions();
        var folds = new Option<int>("--folds") { Description = "Folds (patient-level).", DefaultValueFactory = _ => 5 };
        var report = new Option<string>("--report") { Description = "Folder for report.md, roc.png and metrics.json.", DefaultValueFactory = _ => "xray-crossval" };
        var bootstrap = new Option<int>("--bootstrap") { Description = "Bootstrap resamples for the 95% confidence intervals.", DefaultValueFactory = _ => Bootstrap.DefaultResamples };
        var probe = new ProbeOptionSet();
        var command = new Command("crossval", "k-fold patient-level cross-validation of a training recipe: pooled out-of-fold AUROC/AP with confidence intervals; oof.csv for calibrate.")
        {
            folds, report, bootstrap,
        };
        probe.AddTo(command);
        var training = new TrainingOptionSet();
        training.AddTo(command);
        data.AddTo(command);
        command.SetAction((result, ct) => TrainApp.Guard(error, () =>
        {
            var source = data.From(result) ?? throw new ArgumentException("Give the data: --nih-csv, --csv or --synthetic.");
            var (options, spec) = training.From(result);
            return Task.FromResult(Run(TrainApp.Console(output), source, options, spec, result.GetValue(folds), result.GetValue(report)!,
                result.GetValue(bootstrap), probe.From(result, options), ct));
        }));
        return command;
    }

    private static int Run(
        IAnsiConsole console,
        DataSource source,
        TrainingOptions options,
        PreprocessingSpec spec,
        int folds,
        string reportDirectory,
        int resamples,
        ProbeSettings probe,
        CancellationToken ct)
    {
        void Log(string message) => console.MarkupLine($"[grey]{Markup.Escape(message)}[/]");
        using var all = source.LoadAll(spec, Log);
        var fold = source.Split.Folds(all.PatientIds, folds);
        var classes = all.ClassNames;
        var pooled = new float[all.Count * classes.Count];
        var pooledLogits = new float[all.Count * classes.Count];
        var manifest = new ModelManifest
        {
            Name = "xray-train crossval",
            Version = $"{folds} folds",
            Architecture = options.Architecture,
            ClassNames = classes,
            Preprocessing = spec,
        };
        using var normalizer = new Normalizer(spec);
        var foldMeans = new List<double>();
        string recipe;
        if (probe.Enabled)
        {
            // A linear probe: backbone features once (or from the cache), then one averaged head per fold, in seconds.
            using var network = InitialWeights.Create(options.InitialWeights!, options.Architecture, classes, null);
            var (trainingFeatures, plainFeatures) = LinearProbe.Features(network, all, spec, options, probe.Views, probe.Cache, Log, ct);
            for (var k = 0; k < folds; k++)
            {
                var testIndices = Enumerable.Range(0, all.Count).Where(i => fold[i] == k).ToArray();
                var trainIndices = Enumerable.Range(0, all.Count).Where(i => fold[i] != k).ToArray();
                var labels = trainIndices.SelectMany(i => all.Labels.AsSpan(i * classes.Count, classes.Count).ToArray()).ToArray();
                var head = LinearProbe.TrainAveraged(trainingFeatures.Subset(trainIndices), labels, classes.Count, options, probe.Seeds, ct);
                var logits = head.Logits(plainFeatures.Subset(testIndices));
                for (var i = 0; i < testIndices.Length; i++)
                {
                    Array.Copy(logits, i * classes.Count, pooledLogits, testIndices[i] * classes.Count, classes.Count);
                }

                using var test = all.Subset(testIndices);
                var mean = Trainer.MeanDefined(Trainer.PerClassAuroc(test, logits));
                foldMeans.Add(mean);
                console.MarkupLine($"fold {k + 1}/{folds}: {trainIndices.Length} train, {test.Count} held-out images, mean AUROC {mean:F3}");
            }

            recipe = $"linear probe on cached backbone features, {folds} folds x {probe.Seeds.Count} seed(s) averaged " +
                $"({options.Epochs} epochs, {(options.Augmentation.Enabled ? $"{probe.Views} augmented views" : "no augmentation")})";
        }
        else
        {
        recipe = $"{folds} networks, one per fold";
        for (var k = 0; k < folds; k++)
        {
            var testIndices = Enumerable.Range(0, all.Count).Where(i => fold[i] == k).ToArray();
            using var train = all.Subset(Enumerable.Range(0, all.Count).Where(i => fold[i] != k).ToArray());
            using var test = all.Subset(testIndices);
            var trainer = new Trainer(options with { ValidateEveryEpoch = false })
            {
                OnEpoch = e => console.MarkupLine(Markup.Escape($"fold {k + 1}/{folds} epoch {e.Epoch,3}: train loss {e.TrainLoss:F4} ({e.ImagesPerSecond:F0} img/s)")),
            };
            using var trained = trainer.Train(train, null, manifest, cancellationToken: ct);
            var logits = Trainer.PredictLogits(trained.Model.Network, test, normalizer);
            for (var i = 0; i < testIndices.Length; i++)
            {
                Array.Copy(logits, i * classes.Count, pooledLogits, testIndices[i] * classes.Count, classes.Count);
            }

            var mean = Trainer.MeanDefined(Trainer.PerClassAuroc(test, logits));
            foldMeans.Add(mean);
            console.MarkupLine($"fold {k + 1}/{folds}: {train.Count} train, {test.Count} held-out images, mean AUROC {mean:F3}");
        }
        }

        for (var i = 0; i < pooled.Length; i++)
        {
            pooled[i] = Probabilities.Sigmoid(pooledLogits[i]);
        }

        var evaluation = Evaluator.Evaluate(pooled, all.Labels, classes, Enumerable.Repeat(0.5f, classes.Count).ToArray(), resamples);
        var info = new EvaluationReport.Info(
            manifest,
            $"{recipe} ({options.Epochs} epochs, lr {options.LearningRate.ToString(CultureInfo.InvariantCulture)}, seed {options.Seed}, pos-weight {options.PosWeight.ToString().ToLowerInvariant()})",
            source.Describe(),
            $"pooled out-of-fold predictions ({folds}-fold, patient-level, seed {source.Split.Seed})",
            $"0.5 (not calibrated); per-fold mean AUROC {string.Join(", ", foldMeans.Select(m => m.ToString("F3", CultureInfo.InvariantCulture)))}",
            "fp32");
        Directory.CreateDirectory(reportDirectory);
        EvaluationReport.WriteMarkdown(Path.Combine(reportDirectory, "report.md"), info, evaluation);
        EvaluationReport.WriteRocPng(Path.Combine(reportDirectory, "roc.png"), info, evaluation);
        EvaluationReport.WriteJson(Path.Combine(reportDirectory, "metrics.json"), info, evaluation);
        new OutOfFoldPredictions(classes, all.Names, all.PatientIds, fold, pooledLogits, all.Labels).Write(Path.Combine(reportDirectory, "oof.csv"));
        var table = new Table().AddColumns("class", "n", "pos", "AUROC [[95% CI]]", "AP [[95% CI]]");
        foreach (var c in evaluation.Classes)
        {
            table.AddRow(Markup.Escape(c.ClassName), $"{c.Counted}", $"{c.Positives}", Markup.Escape(c.Auroc.ToString()), Markup.Escape(c.AveragePrecision.ToString()));
        }

        console.Write(table);
        console.MarkupLine($"pooled out-of-fold mean AUROC {Markup.Escape(evaluation.MeanAuroc.ToString())} on {evaluation.Images} images; report and oof.csv in [bold]{Markup.Escape(reportDirectory)}[/]");
        return 0;
    }
}
