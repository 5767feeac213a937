using ScottPlot;
using XRay.LoadTest.Bench;
using XRay.LoadTest.Load;
using XRay.LoadTest.Statistics;

namespace XRay.LoadTest.Reports;

/// <summary>
/// PNG plots with ScottPlot: latency percentiles and throughput over time (a run) or against load (a sweep), and for bench the
/// raw model's images/s per batch size with the two servers placed at the batch sizes they ran.
/// </summary>
public static class PlotReport
{
    private const int Width = 900;
    private const int Height = 520;
    private static readonly Lock FontLock = new();
    private static bool _fontsChecked;

    /// <summary>Writes the plots for <paramref name="report"/> into <paramref name="directory"/>; returns their paths.</summary>
    public static IReadOnlyList<string> Write(LoadTestReport report, string directory)
    {
        EnsureFonts();
        Directory.CreateDirectory(directory);
        var written = new List<string>();
        if (report.Runs is [{ Timeline.Count: > 0 } single])
        {
            // One load level: the question is how it behaved over time, not where one point sits on a load axis.
            written.Add(Save(LatencyOverTime(single), directory, "latency.png"));
            written.Add(Save(ThroughputOverTime(single), directory, "throughput.png"));
        }
        else if (report.Runs.Count > 0)
        {
            written.Add(Save(LatencyVsLoad(report), directory, "latency.png"));
            written.Add(Save(ThroughputVsLoad(report), directory, "throughput.png"));
        }
        if (report.Bench is { Raw.Count: > 0 } bench)
        {
            var plot = new Plot();
            var raw = plot.Add.Scatter(bench.Raw.Select(p => (double)p.BatchSize).ToArray(), bench.Raw.Select(p => p.ImagesPerS).ToArray());
            raw.LegendText = "raw model (in-process)";
            raw.MarkerSize = 7;
            foreach (var (name, phase) in new[] { ("unbatched server", bench.Unbatched), ("batched server", bench.Batched) })
            {
                if (phase is null) continue;
                var point = plot.Add.Scatter(new[] { Math.Max(1, phase.Run.Server.BatchSize.Mean) }, new[] { phase.Run.Throughput.ImagesPerS });
                point.LegendText = $"{name} (at its mean batch size)";
                point.MarkerSize = 12;
                point.MarkerShape = MarkerShape.FilledDiamond;
            }
            plot.Axes.SetLimitsY(0, Math.Max(bench.Raw.Max(p => p.ImagesPerS), bench.Batched?.Run.Throughput.ImagesPerS ?? 0) * 1.15);
            plot.Title($"{bench.Model.Architecture}: images/s vs batch size");
            plot.XLabel("batch size");
            plot.YLabel("images/s");
            // Outside the data: the raw curve is jagged across the whole area.
            plot.ShowLegend(Edge.Bottom);
            written.Add(Save(plot, directory, "bench.png"));
        }
        return written;
    }

    /// <summary>Category10: distinct hues, and distinct from one another in print.</summary>
    private static readonly Color[] Palette = new ScottPlot.Palettes.Category10().Colors;

    /// <summary>
    /// Percentile series drawn so that equal values stay visible: the highest as a large ring around the others, then each
    /// lower one over the one before with a smaller filled marker, each with its own colour and line pattern.
    /// </summary>
    private static readonly (string Name, double Percentile, MarkerShape Marker, float Size, LinePattern Pattern, Color Color)[] PercentileStyles =
    [
        ("p99.9", 99.9, MarkerShape.OpenCircle, 17, LinePattern.Dotted, Palette[3]),
        ("p99", 99, MarkerShape.FilledSquare, 10, LinePattern.Dashed, Palette[1]),
        ("p90", 90, MarkerShape.FilledTriangleUp, 8, LinePattern.DenselyDashed, Palette[2]),
        ("p50", 50, MarkerShape.FilledCircle, 6, LinePattern.Solid, Palette[0]),
    ];

    private static Plot LatencyVsLoad(LoadTestReport report)
    {
        (double[] x, string axis) = LoadAxis(report);
        var plot = new Plot();
        foreach (var style in PercentileStyles)
        {
            var line = plot.Add.Scatter(x, report.Runs.Select(r => r.LatencyMs.Percentile(style.Percentile)).ToArray());
            Style(line, style.Name, style.Color, style.Marker, style.Size, style.Pattern);
        }
        if (report.Sweep is { } sweep)
        {
            var slo = plot.Add.HorizontalLine(sweep.SloMs);
            slo.LinePattern = LinePattern.Dashed;
            slo.Color = Colors.Black;
            slo.LegendText = $"threshold p{sweep.SloPercentile:0.#} {sweep.SloMs:0.##} ms";
        }
        LevelTicks(plot, x);
        plot.Title("Latency vs load");
        plot.XLabel(axis);
        plot.YLabel("latency (ms)");
        plot.Axes.SetLimitsY(0, Math.Max(report.Runs.Max(r => r.LatencyMs.P999), report.Sweep?.SloMs ?? 0) * 1.1 + 1e-3);
        plot.ShowLegend(Alignment.UpperLeft);
        return plot;
    }

    private static Plot ThroughputVsLoad(LoadTestReport report)
    {
        (double[] x, string axis) = LoadAxis(report);
        var plot = new Plot();
        double[] images = report.Runs.Select(r => r.Throughput.ImagesPerS).ToArray();
        if (report.Runs.All(r => r.Payload.ImagesPerRequest == 1))
        {
            // One image per request: the two rates are one curve; say so instead of drawing one over the other.
            Style(plot.Add.Scatter(x, images), "images/s (= requests/s: 1 image per request)", Palette[0], MarkerShape.FilledCircle, 7, LinePattern.Solid);
        }
        else
        {
            Style(plot.Add.Scatter(x, images), "images/s", Palette[0], MarkerShape.FilledCircle, 7, LinePattern.Solid);
            Style(plot.Add.Scatter(x, report.Runs.Select(r => r.Throughput.RequestsPerS).ToArray()), "requests/s", Palette[1],
                MarkerShape.FilledSquare, 7, LinePattern.Dashed);
        }
        LevelTicks(plot, x);
        plot.Title("Throughput vs load");
        plot.XLabel(axis);
        plot.YLabel("per second");
        plot.Axes.SetLimitsY(0, report.Runs.Max(r => Math.Max(r.Throughput.ImagesPerS, r.Throughput.RequestsPerS)) * 1.15 + 1e-3);
        plot.ShowLegend(Alignment.LowerRight);
        return plot;
    }

    private static Plot LatencyOverTime(RunResult run)
    {
        var plot = new Plot();
        TimelinePoint[] points = run.Timeline.Where(p => p.Ok > 0).ToArray();
        double[] x = points.Select(p => (p.StartS + p.EndS) / 2).ToArray();
        foreach (var style in PercentileStyles.Where(s => s.Percentile != 99.9))
        {
            double[] y = points.Select(p => style.Percentile switch { 50 => p.P50Ms, 90 => p.P90Ms, _ => p.P99Ms } ?? 0).ToArray();
            Style(plot.Add.Scatter(x, y), $"{style.Name} per {Interval(run)}", style.Color, style.Marker, style.Size * 0.8f, style.Pattern);
        }
        // The whole run's figures, for reference.
        foreach (var (name, value, color) in new[] { ("p50", run.LatencyMs.P50, Palette[0]), ("p99", run.LatencyMs.P99, Palette[1]) })
        {
            var line = plot.Add.HorizontalLine(value);
            line.Color = color.WithAlpha(0.5);
            line.LinePattern = LinePattern.Dotted;
            line.LegendText = $"{name} of the run {value:0.##} ms";
        }
        // With few requests an interval, p90 and p99 are both its slowest: say how many there were.
        plot.Title($"Latency over time: {run.Label} (~{run.Timeline.Average(p => p.Ok):0} requests per {Interval(run)})");
        plot.XLabel("seconds since measurement began");
        plot.YLabel("latency (ms)");
        plot.Axes.SetLimits(0, run.Timeline[^1].EndS, 0, Math.Max(points.Select(p => p.P99Ms ?? 0).DefaultIfEmpty(0).Max(), run.LatencyMs.P99) * 1.15 + 1e-3);
        plot.ShowLegend(Edge.Bottom);
        return plot;
    }

    private static Plot ThroughputOverTime(RunResult run)
    {
        var plot = new Plot();
        double[] x = run.Timeline.Select(p => (p.StartS + p.EndS) / 2).ToArray();
        double[] images = run.Timeline.Select(p => p.ImagesPerS).ToArray();
        if (run.Payload.ImagesPerRequest == 1)
        {
            Style(plot.Add.Scatter(x, images), "images/s (= requests/s: 1 image per request)", Palette[0], MarkerShape.FilledCircle, 6, LinePattern.Solid);
        }
        else
        {
            Style(plot.Add.Scatter(x, images), "images/s", Palette[0], MarkerShape.FilledCircle, 6, LinePattern.Solid);
            Style(plot.Add.Scatter(x, run.Timeline.Select(p => p.RequestsPerS).ToArray()), "requests/s", Palette[1], MarkerShape.FilledSquare, 6, LinePattern.Dashed);
        }
        if (run.Timeline.Any(p => p.Failed > 0))
        {
            double seconds(TimelinePoint p) => p.EndS - p.StartS;
            Style(plot.Add.Scatter(x, run.Timeline.Select(p => Math.Round(p.Failed / seconds(p), 2)).ToArray()), "failed requests/s", Palette[3],
                MarkerShape.FilledTriangleDown, 6, LinePattern.Dotted);
        }
        var mean = plot.Add.HorizontalLine(run.Throughput.ImagesPerS);
        mean.Color = Palette[0].WithAlpha(0.5);
        mean.LinePattern = LinePattern.Dotted;
        mean.LegendText = $"images/s over the run {run.Throughput.ImagesPerS:0.#}";
        plot.Title($"Throughput over time: {run.Label}");
        plot.XLabel("seconds since measurement began");
        plot.YLabel($"per second (per {Interval(run)})");
        plot.Axes.SetLimits(0, run.Timeline[^1].EndS, 0, run.Timeline.Max(p => Math.Max(p.ImagesPerS, p.RequestsPerS)) * 1.15 + 1e-3);
        plot.ShowLegend(Edge.Bottom);
        return plot;
    }

    private static string Interval(RunResult run) => $"{run.Timeline[0].EndS - run.Timeline[0].StartS:0.##} s";

    private static (double[] X, string Axis) LoadAxis(LoadTestReport report)
    {
        string over = report.Sweep?.Over ?? (report.Runs[0].Mode == "closed" ? "concurrency" : "rate");
        string axis = over == "concurrency" ? "concurrency (callers in flight)" : "offered rate (requests/s)";
        return (report.Runs.Select(r => r.Mode == "closed" ? (double)(r.Concurrency ?? 0) : r.RateRps ?? 0).ToArray(), axis);
    }

    /// <summary>Ticks at the load levels measured, not at fractions of a caller.</summary>
    private static void LevelTicks(Plot plot, double[] x)
    {
        double[] levels = x.Distinct().Order().ToArray();
        plot.Axes.Bottom.SetTicks(levels, levels.Select(v => v.ToString("0.##", System.Globalization.CultureInfo.InvariantCulture)).ToArray());
        double pad = Math.Max(0.5, (levels[^1] - levels[0]) * 0.04);
        plot.Axes.SetLimitsX(levels[0] - pad, levels[^1] + pad);
    }

    private static void Style(ScottPlot.Plottables.Scatter line, string legend, Color color, MarkerShape marker, float size, LinePattern pattern)
    {
        line.LegendText = legend;
        line.Color = color;
        line.MarkerShape = marker;
        line.MarkerSize = size;
        line.LinePattern = pattern;
        line.LineWidth = 2;
        line.MarkerLineWidth = 2;
    }

    private static string Save(Plot plot, string directory, string name)
    {
        string path = Path.Combine(directory, name);
        plot.SavePng(path, Width, Height);
        return path;
    }

    /// <summary>
    /// SkiaSharp's NoDependencies natives have no fontconfig, so text would not render: load DejaVu Sans
    /// (Debian: fonts-dejavu-core) from its file when present.
    /// </summary>
    private static void EnsureFonts()
    {
        lock (FontLock)
        {
            if (_fontsChecked) return;
            _fontsChecked = true;
            string[] folders = ["/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF"];
            string? folder = folders.FirstOrDefault(f => File.Exists(Path.Combine(f, "DejaVuSans.ttf")));
            if (folder is null)
            {
                Console.Error.WriteLine("warning: DejaVu Sans not found (apt-get install fonts-dejavu-core): plots will have no text.");
                return;
            }
            Fonts.AddFontFile("DejaVu Sans", Path.Combine(folder, "DejaVuSans.ttf"), bold: false, italic: false);
            string bold = Path.Combine(folder, "DejaVuSans-Bold.ttf");
            Fonts.AddFontFile("DejaVu Sans", File.Exists(bold) ? bold : Path.Combine(folder, "DejaVuSans.ttf"), bold: true, italic: false);
            Fonts.Default = "DejaVu Sans";
        }
    }
}
