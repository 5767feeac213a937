using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;
using XRay.Model;
using XRay.Model.Evaluation;

namespace XRay.Train;

/// <summary>
/// <c>calibrate</c>: from out-of-fold predictions (<c>crossval</c>'s <c>oof.csv</c>), fits per-class Platt scaling and
/// chooses per-class thresholds on the calibrated probabilities by an operating-point rule; reports calibration error
/// before and after (cross-fitted: each fold calibrated by a fit on the other folds) with a reliability plot; writes
/// calibration, thresholds and how they were chosen into a checkpoint's manifest.
/// </summary>
internal static class CalibrateCommand
{
    public static Command Create(TextWriter output, TextWriter error)
    {
        var predictions = new Option<string>("--predictions") { Description = "Out-of-fold predictions: the oof.csv crossval wrote.", Required = true };
        var model = new Option<string?>("--model") { Description = "Checkpoint folder whose manifest receives calibration and thresholds (with --write)." };
        var write = new Option<bool>("--write") { Description = "Write calibration, thresholds and operating points into --model's manifest.json." };
        var rule = new Option<string>("--operating-point")
        {
            Description = "Threshold rule per class: max-f1, max-f1:MIN_PRECISION, sensitivity:TARGET or specificity:TARGET.",
            DefaultValueFactory = _ => "max-f1:0.2",
        };
        var report = new Option<string>("--report") { Description = "Folder for calibration.md, reliability.png and calibration.json.", DefaultValueFactory = _ => "xray-calibration" };
        var command = new Command("calibrate", "Fit per-class probability calibration and choose thresholds on out-of-fold predictions; report ECE/Brier before and after.")
        {
            predictions, model, write, rule, report,
        };
        command.SetAction((result, ct) => TrainApp.Guard(error, () =>
        {
            var modelPath = result.GetValue(model);
            if (result.GetValue(write) && modelPath is null)
            {
                throw new ArgumentException("--write needs --model DIR.");
            }

            var parsed = OperatingPointRule.Parse(result.GetValue(rule)!);
            var oof = OutOfFoldPredictions.Read(result.GetValue(predictions)!);
            return Task.FromResult(Run(TrainApp.Console(output), oof, result.GetValue(predictions)!, parsed, modelPath, result.GetValue(write), result.GetValue(report)!));
        }));
        return command;
    }

    /// <summary>Per class: the fit, what it gave out of fold, and the operating point chosen.</summary>
    internal sealed record ClassCalibration(
        string Class,
        int Positives,
        int Counted,
        PlattScaling Platt,
        double EceBefore,
        double EcePlatt,
        double EceIsotonic,
        double BrierBefore,
        double BrierPlatt,
        double BrierIsotonic,
        OperatingPoint Point,
        string? Note);

    private static int Run(IAnsiConsole console, OutOfFoldPredictions oof, string predictionsPath, OperatingPointRule rule, string? modelPath, bool write, string reportDirectory)
    {
        var (classes, before, platt, isotonic) = Fit(oof, rule);
        var chosenOn = $"out-of-fold predictions of {oof.Count} images ({oof.Folds.Distinct().Count()}-fold patient-level cross-validation, {Path.GetFileName(predictionsPath)})";
        Directory.CreateDirectory(reportDirectory);
        WriteMarkdown(Path.Combine(reportDirectory, "calibration.md"), classes, oof, rule, chosenOn, before, platt, isotonic);
        EvaluationReport.WriteReliabilityPng(Path.Combine(reportDirectory, "reliability.png"), "out-of-fold, all classes pooled",
        [
            ("sigmoid(logit) (uncalibrated)", Pooled(before, oof.Labels)),
            ("Platt, cross-fitted", Pooled(platt, oof.Labels)),
        ]);
        File.WriteAllText(Path.Combine(reportDirectory, "calibration.json"), JsonSerializer.Serialize(new
        {
            chosenOn,
            rule = rule.ToString(),
            pooled = new
            {
                eceBefore = Pooled(before, oof.Labels).Ece,
                ecePlatt = Pooled(platt, oof.Labels).Ece,
                eceIsotonic = Pooled(isotonic, oof.Labels).Ece,
                brierBefore = CalibrationFit.Brier(before, oof.Labels),
                brierPlatt = CalibrationFit.Brier(platt, oof.Labels),
                brierIsotonic = CalibrationFit.Brier(isotonic, oof.Labels),
            },
            classes,
        }, new JsonSerializerOptions(ModelManifest.JsonOptions) { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));

        var table = new Table().AddColumns("class", "pos", "ECE before", "ECE Platt", "Brier before", "Brier Platt", "thr", "sens", "spec", "pos. rate", "prevalence");
        foreach (var c in classes)
        {
            table.AddRow(Markup.Escape(c.Class), $"{c.Positives}", F(c.EceBefore), F(c.EcePlatt), F(c.BrierBefore), F(c.BrierPlatt),
                F(c.Point.Threshold), F(c.Point.Sensitivity), F(c.Point.Specificity), F(c.Point.PositiveRate), F(c.Point.Prevalence));
        }

        console.Write(table);
        console.MarkupLine(Markup.Escape(
            $"pooled ECE {F(Pooled(before, oof.Labels).Ece)} -> {F(Pooled(platt, oof.Labels).Ece)} (Platt, cross-fitted); " +
            $"Brier {F(CalibrationFit.Brier(before, oof.Labels))} -> {F(CalibrationFit.Brier(platt, oof.Labels))}; report in {reportDirectory}"));

        if (write)
        {
            var loaded = ModelManifest.FromJson(File.ReadAllText(Path.Combine(modelPath!, Checkpoint.ManifestFileName)));
            if (!loaded.ClassNames.SequenceEqual(oof.ClassNames))
            {
                throw new ArgumentException($"The predictions' classes ({string.Join(", ", oof.ClassNames)}) differ from the model's ({string.Join(", ", loaded.ClassNames)}).");
            }

            var updated = loaded with
            {
                Calibration = new ProbabilityCalibration
                {
                    Classes = classes.Select(c => c.Platt).ToArray(),
                    FittedOn = chosenOn,
                },
                Thresholds = classes.Select(c => c.Point.Threshold).ToArray(),
                OperatingPoints = new OperatingPoints { ChosenOn = chosenOn, Classes = classes.Select(c => c.Point).ToArray() },
            };
            updated.Validate();
            File.WriteAllText(Path.Combine(modelPath!, Checkpoint.ManifestFileName), updated.ToJson());
            console.MarkupLine($"calibration and thresholds written to {Markup.Escape(Path.Combine(modelPath!, Checkpoint.ManifestFileName))}");
        }

        return 0;
    }

    /// <summary>
    /// Fits every class on all out-of-fold predictions (what the manifest stores; thresholds are chosen on these
    /// calibrated probabilities) and, for the report, cross-fitted probabilities: each fold's images calibrated by a fit
    /// on the other folds (Platt and isotonic), so the "after" figures are not measured on the data they were fitted to.
    /// </summary>
    internal static (ClassCalibration[] Classes, float[] Before, float[] Platt, float[] Isotonic) Fit(OutOfFoldPredictions oof, OperatingPointRule rule)
    {
        var n = oof.Count;
        var c = oof.NumClasses;
        var before = oof.Logits.Select(Probabilities.Sigmoid).ToArray();
        var platt = new float[n * c];
        var isotonic = new float[n * c];
        var folds = oof.Folds.Distinct().Order().ToArray();
        var result = new ClassCalibration[c];
        for (var k = 0; k < c; k++)
        {
            var logits = oof.Column(oof.Logits, k);
            var labels = oof.Column(oof.Labels, k);
            foreach (var fold in folds)
            {
                var fitIndices = Enumerable.Range(0, n).Where(i => oof.Folds[i] != fold).ToArray();
                var fitLogits = fitIndices.Select(i => logits[i]).ToArray();
                var fitLabels = fitIndices.Select(i => labels[i]).ToArray();
                var scaling = CalibrationFit.Platt(fitLogits, fitLabels);
                var steps = CalibrationFit.Isotonic(fitLogits, fitLabels);
                for (var i = 0; i < n; i++)
                {
                    if (oof.Folds[i] == fold)
                    {
                        platt[i * c + k] = scaling.Apply(logits[i]);
                        isotonic[i * c + k] = steps.Scores.Length == 0 ? 0.5f : CalibrationFit.IsotonicAt(steps, logits[i]);
                    }
                }
            }

            var fitted = CalibrationFit.Platt(logits, labels);
            var calibrated = logits.Select(fitted.Apply).ToArray();
            var (threshold, note) = rule.Choose(calibrated, labels);
            var confusion = ClassificationMetrics.Confusion(calibrated, labels, threshold);
            var counted = labels.Count(v => !float.IsNaN(v));
            var positives = labels.Count(v => v >= 0.5f);
            var point = new OperatingPoint(
                oof.ClassNames[k], threshold, note is null ? rule.ToString() : $"{rule}: {note}",
                Round(confusion.Sensitivity), Round(confusion.Specificity), Round(confusion.Precision),
                Round((double)(confusion.TruePositives + confusion.FalsePositives) / counted), Round((double)positives / counted));
            var beforeK = oof.Column(before, k);
            var plattK = oof.Column(platt, k);
            var isotonicK = oof.Column(isotonic, k);
            result[k] = new ClassCalibration(
                oof.ClassNames[k], positives, counted, fitted,
                Round(CalibrationFit.ExpectedCalibrationError(beforeK, labels)), Round(CalibrationFit.ExpectedCalibrationError(plattK, labels)),
                Round(CalibrationFit.ExpectedCalibrationError(isotonicK, labels)),
                Round(CalibrationFit.Brier(beforeK, labels)), Round(CalibrationFit.Brier(plattK, labels)), Round(CalibrationFit.Brier(isotonicK, labels)),
                point, note);
        }

        return (result, before, platt, isotonic);
    }

    private static (IReadOnlyList<ReliabilityBin> Bins, double Ece) Pooled(float[] probabilities, float[] labels) =>
        (CalibrationFit.Reliability(probabilities, labels), Round(CalibrationFit.ExpectedCalibrationError(probabilities, labels)));

    private static void WriteMarkdown(string path, ClassCalibration[] classes, OutOfFoldPredictions oof, OperatingPointRule rule, string chosenOn,
        float[] before, float[] platt, float[] isotonic)
    {
        var md = new StringBuilder();
        md.AppendLine("# Calibration and operating points");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"- Fitted and chosen on: {chosenOn}");
        md.AppendLine("- Calibration: Platt scaling per class, `p = sigmoid(scale * logit + offset)`; before = `sigmoid(logit)`.");
        md.AppendLine("- After-calibration figures are cross-fitted: each fold's images calibrated by a fit on the other folds.");
        md.AppendLine(CultureInfo.InvariantCulture, $"- Operating point: {rule}; sensitivity, specificity, precision and positive rate are out-of-fold.");
        md.AppendLine(CultureInfo.InvariantCulture,
            $"- Pooled over classes: ECE {F(Pooled(before, oof.Labels).Ece)} before, {F(Pooled(platt, oof.Labels).Ece)} Platt, {F(Pooled(isotonic, oof.Labels).Ece)} isotonic; " +
            $"Brier {F(CalibrationFit.Brier(before, oof.Labels))} before, {F(CalibrationFit.Brier(platt, oof.Labels))} Platt, {F(CalibrationFit.Brier(isotonic, oof.Labels))} isotonic (10 equal-width bins).");
        md.AppendLine();
        md.AppendLine("| class | positives | ECE before | ECE Platt | ECE isotonic | Brier before | Brier Platt | Brier isotonic | scale | offset | threshold | sensitivity | specificity | precision | positive rate | prevalence |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var c in classes)
        {
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {c.Class} | {c.Positives} | {F(c.EceBefore)} | {F(c.EcePlatt)} | {F(c.EceIsotonic)} | {F(c.BrierBefore)} | {F(c.BrierPlatt)} | {F(c.BrierIsotonic)} | " +
                $"{F(c.Platt.Scale)} | {F(c.Platt.Offset)} | {F(c.Point.Threshold)} | {F(c.Point.Sensitivity)} | {F(c.Point.Specificity)} | {F(c.Point.Precision)} | " +
                $"{F(c.Point.PositiveRate)} | {F(c.Point.Prevalence)} |");
        }

        var notes = classes.Where(c => c.Note is not null).ToArray();
        if (notes.Length > 0)
        {
            md.AppendLine();
            foreach (var c in notes)
            {
                md.AppendLine(CultureInfo.InvariantCulture, $"- {c.Class}: {c.Note}.");
            }
        }

        md.AppendLine();
        md.AppendLine("![reliability](reliability.png)");
        File.WriteAllText(path, md.ToString());
    }

    private static double Round(double v) => double.IsNaN(v) ? v : Math.Round(v, 4);

    private static string F(double v) => double.IsNaN(v) ? "n/a" : v.ToString("F3", CultureInfo.InvariantCulture);
}
