using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Spectre.Console;
using XRay.Model;
using XRay.Model.Evaluation;
using XRay.Model.Training;
using static TorchSharp.torch;

namespace XRay.Train;

/// <summary>
/// <c>evaluate</c>: per-class AUROC and average precision with bootstrap CIs, F1/sensitivity/specificity at the
/// thresholds; thresholds calibrated on the validation split (max F1 or Youden) and optionally written into the
/// manifest; a Markdown report, a ROC-curve PNG and metrics.json.
/// </summary>
internal static class EvaluateCommand
{
    public static Command Create(TextWriter output, TextWriter error)
    {
        var data = new DataOptions();
        var model = new Option<string>("--model") { Description = "Checkpoint folder, or 'default' for the built-in model.", Required = true };
        var on = new Option<string>("--on") { Description = "Which images to evaluate: test, val, train (of the patient split) or all.", DefaultValueFactory = _ => "test" };
        var calibrate = new Option<string>("--calibrate") { Description = "Thresholds from the validation split: max-f1, youden, or none (the manifest's; for thresholds from cross-validation see calibrate).", DefaultValueFactory = _ => "none" };
        var writeThresholds = new Option<bool>("--write-thresholds") { Description = "Write the calibrated thresholds into the checkpoint's manifest.json." };
        var report = new Option<string>("--report") { Description = "Folder for report.md, roc.png and metrics.json.", DefaultValueFactory = _ => "xray-evaluation" };
        var precision = new Option<string>("--precision") { Description = "fp32 or bf16 (as the server would run it).", DefaultValueFactory = _ => "fp32" };
        var runtime = new Option<string>("--runtime") { Description = "torch, onnxruntime (the checkpoint exported to ONNX in memory; fp32) or auto (as the server picks).", DefaultValueFactory = _ => "torch" };
        var bootstrap = new Option<int>("--bootstrap") { Description = "Bootstrap resamples for the 95% confidence intervals.", DefaultValueFactory = _ => Bootstrap.DefaultResamples };
        var command = new Command("evaluate", "Evaluate a checkpoint: AUROC, AP, F1 at calibrated thresholds, with confidence intervals; Markdown report and ROC PNG.")
        {
            model, on, calibrate, writeThresholds, report, precision, runtime, bootstrap,
        };
        data.AddTo(command);
        command.SetAction((result, ct) => TrainApp.Guard(error, async () =>
        {
            var modelPath = result.GetValue(model)!;
            var method = result.GetValue(calibrate) switch
            {
                "max-f1" => (ThresholdMethod?)ThresholdMethod.MaxF1,
                "youden" => ThresholdMethod.Youden,
                "none" => null,
                var other => throw new ArgumentException($"--calibrate must be max-f1, youden or none; got '{other}'."),
            };
            var part = result.GetValue(on) switch
            {
                "test" => (SplitPart?)SplitPart.Test,
                "val" => SplitPart.Validation,
                "train" => SplitPart.Train,
                "all" => null,
                var other => throw new ArgumentException($"--on must be test, val, train or all; got '{other}'."),
            };
            if (result.GetValue(writeThresholds) && (modelPath == "default" || method is null))
            {
                throw new ArgumentException("--write-thresholds needs a checkpoint folder and a --calibrate method.");
            }

            using var loaded = modelPath == "default" ? DefaultModel.Create() : Checkpoint.Load(modelPath);
            var source = data.From(result) ?? DataSource.FromManifest(loaded.Manifest)?.Locate()
                ?? throw new ArgumentException("The manifest does not record its training data: give --nih-csv, --csv or --synthetic.");
            return await RunAsync(TrainApp.Console(output), loaded, modelPath, source, part, method, result.GetValue(writeThresholds),
                result.GetValue(report)!, result.GetValue(precision)!, result.GetValue(runtime)!, result.GetValue(bootstrap), ct);
        }));
        return command;
    }

    private static async Task<int> RunAsync(
        IAnsiConsole console,
        LoadedModel loaded,
        string modelPath,
        DataSource source,
        SplitPart? part,
        ThresholdMethod? method,
        bool writeThresholds,
        string reportDirectory,
        string precision,
        string runtime,
        int resamples,
        CancellationToken ct)
    {
        var manifest = loaded.Manifest;
        using var sets = source.Load(manifest.Preprocessing, message => console.MarkupLine($"[grey]{Markup.Escape(message)}[/]"));
        if (!sets.Train.ClassNames.SequenceEqual(manifest.ClassNames))
        {
            throw new ArgumentException(
                $"The data's classes ({string.Join(", ", sets.Train.ClassNames)}) differ from the model's ({string.Join(", ", manifest.ClassNames)}).");
        }

        using var all = part is null ? Concatenate(sets) : null;
        var evaluated = part is { } p ? sets[p] : all!;
        if (evaluated.Count == 0)
        {
            throw new ArgumentException(
                $"The {part?.ToString().ToLowerInvariant() ?? "whole"} set is empty; change --on or the split fractions" +
                (part is not null ? " (a model trained on every image has no held-out set: --on all evaluates it in-sample; " +
                    "its cross-validated figures are in docs/calibration.md)." : "."));
        }

        var options = new RunnerOptions { Device = "cpu", Precision = precision };
        using IInferenceRunner runner = InferenceRuntimes.Create(loaded, runtime, options);
        var thresholds = manifest.EffectiveThresholds.ToArray();
        var calibration = manifest.OperatingPoints is { } points
            ? $"the manifest's: {string.Join("; ", points.Classes.Select(p => p.Rule).Distinct())}, chosen on {points.ChosenOn}"
            : "the manifest's thresholds";
        if (manifest.Calibration is not null)
        {
            calibration += "; probabilities calibrated by the manifest's Platt scaling";
        }
        if (method is { } m)
        {
            if (sets.Validation.Count == 0)
            {
                throw new ArgumentException("Calibration needs a validation split (--val-fraction > 0), or use --calibrate none.");
            }

            thresholds = Evaluator.CalibrateThresholds(await PredictAsync(runner, sets.Validation, manifest, ct), sets.Validation.Labels, manifest.ClassNames.Count, m);
            calibration = $"{(m == ThresholdMethod.MaxF1 ? "max F1" : "Youden's J")} on the validation split ({sets.Validation.Count} images)";
            if (part == SplitPart.Validation)
            {
                console.MarkupLine("[yellow]warning: thresholds calibrated and evaluated on the same images; F1 is optimistic.[/]");
            }
        }

        var probabilities = await PredictAsync(runner, evaluated, manifest, ct);
        var evaluation = Evaluator.Evaluate(probabilities, evaluated.Labels, manifest.ClassNames, thresholds, resamples);
        var info = new EvaluationReport.Info(
            manifest, modelPath, source.Describe(),
            part is null ? "all images" : $"{part.ToString()!.ToLowerInvariant()} split (patient-level, seed {source.Split.Seed})",
            calibration, precision);
        Directory.CreateDirectory(reportDirectory);
        EvaluationReport.WriteMarkdown(Path.Combine(reportDirectory, "report.md"), info, evaluation);
        EvaluationReport.WriteRocPng(Path.Combine(reportDirectory, "roc.png"), info, evaluation);
        EvaluationReport.WriteJson(Path.Combine(reportDirectory, "metrics.json"), info, evaluation);

        var table = new Table().AddColumns("class", "n", "pos", "AUROC [[95% CI]]", "AP [[95% CI]]", "thr", "F1", "pos. rate", "prevalence");
        foreach (var c in evaluation.Classes)
        {
            table.AddRow(Markup.Escape(c.ClassName), $"{c.Counted}", $"{c.Positives}", Markup.Escape(c.Auroc.ToString()), Markup.Escape(c.AveragePrecision.ToString()),
                c.Threshold.ToString("F3", CultureInfo.InvariantCulture), c.AtThreshold.F1.ToString("F3", CultureInfo.InvariantCulture),
                c.PositiveRate.ToString("F3", CultureInfo.InvariantCulture), c.Prevalence.ToString("F3", CultureInfo.InvariantCulture));
        }

        console.Write(table);
        console.MarkupLine($"mean AUROC {Markup.Escape(evaluation.MeanAuroc.ToString())} on {evaluation.Images} images ({Markup.Escape(info.Part)}); report in [bold]{Markup.Escape(reportDirectory)}[/]");

        if (writeThresholds)
        {
            var training = manifest.Training?.DeepClone().AsObject() ?? new JsonObject();
            training["calibration"] = new JsonObject
            {
                ["method"] = calibration,
                ["evaluatedOn"] = info.Part,
                ["meanAuroc"] = double.IsNaN(evaluation.MeanAuroc.Value) ? null : Math.Round(evaluation.MeanAuroc.Value, 4),
            };
            var updated = manifest with { Thresholds = thresholds, Training = training };
            updated.Validate();
            File.WriteAllText(Path.Combine(modelPath, Checkpoint.ManifestFileName), updated.ToJson());
            console.MarkupLine($"thresholds written to {Markup.Escape(Path.Combine(modelPath, Checkpoint.ManifestFileName))}");
        }

        return 0;
    }

    /// <summary>
    /// Probabilities through <see cref="ModelRunner"/>, the serving path, in batches of 32, mapped from logits by the
    /// server's own <see cref="ProbabilityMap"/> (the manifest's calibration, or the plain sigmoid).
    /// </summary>
    internal static async Task<float[]> PredictAsync(IInferenceRunner runner, ImageSet set, ModelManifest manifest, CancellationToken ct)
    {
        const int batchSize = 32;
        var map = new ProbabilityMap(manifest);
        using var normalizer = new Normalizer(manifest.Preprocessing);
        var probabilities = new float[set.Count * runner.NumClasses];
        for (var start = 0; start < set.Count; start += batchSize)
        {
            var n = Math.Min(batchSize, set.Count - start);
            float[] input;
            using (var scope = NewDisposeScope())
            {
                input = MemoryMarshal.Cast<byte, float>(normalizer.Apply(set.Planes.narrow(0, start, n)).contiguous().bytes).ToArray();
            }

            var logits = await runner.RunAsync(input, n, ct);
            for (var i = 0; i < logits.Length; i++)
            {
                probabilities[start * runner.NumClasses + i] = map.Probability(i % runner.NumClasses, logits[i]);
            }
        }

        return probabilities;
    }

    private static ImageSet Concatenate(SplitSets sets)
    {
        // Subset of a combined view: the three parts in order train, validation, test.
        return ImageSet.FromTensors(
            cat([sets.Train.Planes, sets.Validation.Planes, sets.Test.Planes], 0),
            [.. sets.Train.Labels, .. sets.Validation.Labels, .. sets.Test.Labels],
            sets.Train.ClassNames,
            [.. sets.Train.Names, .. sets.Validation.Names, .. sets.Test.Names],
            [.. sets.Train.PatientIds, .. sets.Validation.PatientIds, .. sets.Test.PatientIds]);
    }
}
