using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ScottPlot;
using XRay.Model;
using XRay.Model.Evaluation;

namespace XRay.Train;

/// <summary>Writes an <see cref="EvaluationResult"/> as Markdown, a ROC-curve PNG (ScottPlot) and JSON.</summary>
internal static class EvaluationReport
{
    private static readonly Lock FontLock = new();
    private static bool _fontsChecked;

    /// <summary>What was evaluated, for the report's header.</summary>
    public sealed record Info(ModelManifest Manifest, string ModelPath, string Data, string Part, string Thresholds, string Precision);

    public static void WriteMarkdown(string path, Info info, EvaluationResult result)
    {
        var m = info.Manifest;
        var md = new StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# Evaluation: {m.Name} {m.Version} ({m.Architecture})");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"- Model: `{info.ModelPath}`; precision {info.Precision}");
        md.AppendLine(CultureInfo.InvariantCulture, $"- Data: {info.Data}; evaluated on the {info.Part}: {result.Images} images");
        md.AppendLine(CultureInfo.InvariantCulture, $"- Thresholds: {info.Thresholds}");
        md.AppendLine(CultureInfo.InvariantCulture,
            $"- Mean AUROC (classes with positives and negatives): **{Format(result.MeanAuroc)}**");
        md.AppendLine(CultureInfo.InvariantCulture,
            $"- Brackets: 95% percentile-bootstrap confidence intervals over images ({result.Resamples} resamples).");
        md.AppendLine();
        md.AppendLine("| class | n | positives | AUROC [95% CI] | AP [95% CI] | threshold | F1 | sensitivity | specificity | positive rate | prevalence |");
        md.AppendLine("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|");
        foreach (var c in result.Classes)
        {
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {c.ClassName} | {c.Counted} | {c.Positives} | {Format(c.Auroc)} | {Format(c.AveragePrecision)} | {c.Threshold:F3} | " +
                $"{c.AtThreshold.F1:F3} | {Ratio(c.AtThreshold.Sensitivity)} | {Ratio(c.AtThreshold.Specificity)} | {Ratio(c.PositiveRate)} | {Ratio(c.Prevalence)} |");
        }

        md.AppendLine();
        md.AppendLine("![ROC curves](roc.png)");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"{m.Description}");
        File.WriteAllText(path, md.ToString());
    }

    public static void WriteRocPng(string path, Info info, EvaluationResult result)
    {
        EnsureFonts();
        var plot = new Plot();
        var diagonal = plot.Add.Line(0, 0, 1, 1);
        diagonal.LinePattern = LinePattern.Dashed;
        diagonal.Color = Colors.Gray;
        var index = 0;
        foreach (var c in result.Classes.Where(c => c.RocCurve.Count > 0))
        {
            var line = plot.Add.Scatter(c.RocCurve.Select(p => p.Fpr).ToArray(), c.RocCurve.Select(p => p.Tpr).ToArray());
            (line.Color, line.LinePattern, line.MarkerShape) = CurveStyle(index++);
            line.MarkerSize = 6;
            line.LineWidth = 1.5f;
            line.LegendText = $"{c.ClassName} {c.Auroc.Value:F2}";
        }

        plot.Axes.SetLimits(0, 1, 0, 1);
        plot.Title($"{info.Manifest.Name}: ROC, {info.Part} ({result.Images} images), mean AUROC {result.MeanAuroc.Value:F3}");
        plot.XLabel("false positive rate (1 - specificity)");
        plot.YLabel("true positive rate (sensitivity)");
        // Beside the plot, not over the curves.
        plot.ShowLegend(Edge.Right);
        plot.SavePng(path, 1200, 760);
    }

    private static readonly MarkerShape[] Markers =
    [
        MarkerShape.FilledCircle, MarkerShape.FilledSquare, MarkerShape.FilledTriangleUp, MarkerShape.FilledDiamond,
        MarkerShape.FilledTriangleDown, MarkerShape.OpenCircle, MarkerShape.OpenSquare, MarkerShape.OpenTriangleUp,
        MarkerShape.OpenDiamond, MarkerShape.OpenTriangleDown, MarkerShape.Cross, MarkerShape.Eks, MarkerShape.Asterisk,
        MarkerShape.HashTag,
    ];

    /// <summary>
    /// The look of curve <paramref name="index"/>: ten colours (Category10), then the same colours dashed, then dotted,
    /// and a marker shape of its own for the first fourteen, so no two of NIH's 14 classes look alike.
    /// </summary>
    internal static (Color Color, LinePattern Pattern, MarkerShape Marker) CurveStyle(int index)
    {
        Color[] colors = new ScottPlot.Palettes.Category10().Colors;
        LinePattern[] patterns = [LinePattern.Solid, LinePattern.Dashed, LinePattern.Dotted];
        return (colors[index % colors.Length], patterns[index / colors.Length % patterns.Length], Markers[index % Markers.Length]);
    }

    /// <summary>A reliability diagram: observed rate against mean predicted probability per bin, one series per calibration.</summary>
    public static void WriteReliabilityPng(string path, string title, IReadOnlyList<(string Label, (IReadOnlyList<ReliabilityBin> Bins, double Ece) Result)> series)
    {
        EnsureFonts();
        var plot = new Plot();
        var diagonal = plot.Add.Line(0, 0, 1, 1);
        diagonal.LinePattern = LinePattern.Dashed;
        diagonal.Color = Colors.Gray;
        diagonal.LegendText = "perfect calibration";
        foreach (var (label, (bins, ece)) in series)
        {
            var filled = bins.Where(b => b.Count > 0).ToArray();
            var line = plot.Add.Scatter(filled.Select(b => b.MeanPredicted).ToArray(), filled.Select(b => b.ObservedRate).ToArray());
            line.LineWidth = 1.5f;
            line.MarkerSize = 7;
            line.LegendText = $"{label}: ECE {ece:F3}";
        }

        plot.Axes.SetLimits(0, 1, 0, 1);
        plot.Title($"Reliability, {title}");
        plot.XLabel("mean predicted probability (10 equal-width bins)");
        plot.YLabel("observed rate of the finding");
        plot.ShowLegend(Alignment.UpperLeft);
        plot.SavePng(path, 800, 760);
    }

    public static void WriteJson(string path, Info info, EvaluationResult result)
    {
        static JsonNode? N(double v) => double.IsNaN(v) ? null : JsonValue.Create(Math.Round(v, 4));
        static JsonObject E(Estimate e) => new() { ["value"] = N(e.Value), ["lower95"] = N(e.Lower), ["upper95"] = N(e.Upper) };
        var classes = new JsonArray();
        foreach (var c in result.Classes)
        {
            classes.Add(new JsonObject
            {
                ["class"] = c.ClassName,
                ["counted"] = c.Counted,
                ["positives"] = c.Positives,
                ["auroc"] = E(c.Auroc),
                ["averagePrecision"] = E(c.AveragePrecision),
                ["threshold"] = c.Threshold,
                ["f1"] = N(c.AtThreshold.F1),
                ["sensitivity"] = N(c.AtThreshold.Sensitivity),
                ["specificity"] = N(c.AtThreshold.Specificity),
                ["positiveRate"] = N(c.PositiveRate),
                ["prevalence"] = N(c.Prevalence),
            });
        }

        var json = new JsonObject
        {
            ["model"] = info.Manifest.Name,
            ["version"] = info.Manifest.Version,
            ["architecture"] = info.Manifest.Architecture,
            ["data"] = info.Data,
            ["evaluatedOn"] = info.Part,
            ["images"] = result.Images,
            ["precision"] = info.Precision,
            ["thresholds"] = info.Thresholds,
            ["meanAuroc"] = E(result.MeanAuroc),
            ["bootstrapResamples"] = result.Resamples,
            ["classes"] = classes,
        };
        File.WriteAllText(path, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    private static string Format(Estimate e) =>
        double.IsNaN(e.Value) ? "n/a" : double.IsNaN(e.Lower) ? $"{e.Value:F3}" : $"{e.Value:F3} [{e.Lower:F3}, {e.Upper:F3}]";

    private static string Ratio(double v) => double.IsNaN(v) ? "n/a" : v.ToString("F3", CultureInfo.InvariantCulture);

    /// <summary>SkiaSharp's NoDependencies natives have no fontconfig: load DejaVu Sans (fonts-dejavu-core) from its file when present.</summary>
    private static void EnsureFonts()
    {
        lock (FontLock)
        {
            if (_fontsChecked)
            {
                return;
            }

            _fontsChecked = true;
            string[] folders = ["/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF"];
            var folder = folders.FirstOrDefault(f => File.Exists(Path.Combine(f, "DejaVuSans.ttf")));
            if (folder is null)
            {
                return; // plots still render, without text
            }

            Fonts.AddFontFile("DejaVu Sans", Path.Combine(folder, "DejaVuSans.ttf"), bold: false, italic: false);
            var bold = Path.Combine(folder, "DejaVuSans-Bold.ttf");
            Fonts.AddFontFile("DejaVu Sans", File.Exists(bold) ? bold : Path.Combine(folder, "DejaVuSans.ttf"), bold: true, italic: false);
            Fonts.Default = "DejaVu Sans";
        }
    }
}
