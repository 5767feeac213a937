using ScottPlot;
using XRay.LoadTest.Bench;
using XRay.LoadTest.Load;

namespace XRay.LoadTest.Reports;

/// <summary>
/// PNG plots with ScottPlot: latency percentiles and throughput against load (run, sweep), and for bench the
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
        if (report.Runs.Count > 0)
        {
            string over = report.Sweep?.Over ?? (report.Runs[0].Mode == "closed" ? "concurrency" : "rate");
            string axis = over == "concurrency" ? "concurrency (callers in flight)" : "offered rate (requests/s)";
            double[] x = report.Runs.Select(r => r.Mode == "closed" ? (double)(r.Concurrency ?? 0) : r.RateRps ?? 0).ToArray();

            var latency = new Plot();
            foreach (var (name, pick) in new (string, Func<RunResult, double>)[]
            {
                ("p50", r => r.LatencyMs.P50), ("p90", r => r.LatencyMs.P90), ("p99", r => r.LatencyMs.P99), ("p99.9", r => r.LatencyMs.P999),
            })
            {
                var line = latency.Add.Scatter(x, report.Runs.Select(pick).ToArray());
                line.LegendText = name;
                line.MarkerSize = 7;
            }
            if (report.Sweep is { } sweep)
            {
                var slo = latency.Add.HorizontalLine(sweep.SloMs);
                slo.LinePattern = LinePattern.Dashed;
                slo.LegendText = $"threshold p{sweep.SloPercentile:0.#} {sweep.SloMs:0.##} ms";
            }
            latency.Title("Latency vs load");
            latency.XLabel(axis);
            latency.YLabel("latency (ms)");
            latency.ShowLegend(Alignment.UpperLeft);
            written.Add(Save(latency, directory, "latency.png"));

            var throughput = new Plot();
            var images = throughput.Add.Scatter(x, report.Runs.Select(r => r.Throughput.ImagesPerS).ToArray());
            images.LegendText = "images/s";
            images.MarkerSize = 7;
            var requests = throughput.Add.Scatter(x, report.Runs.Select(r => r.Throughput.RequestsPerS).ToArray());
            requests.LegendText = "requests/s";
            requests.MarkerSize = 7;
            requests.LinePattern = LinePattern.Dashed;
            throughput.Title("Throughput vs load");
            throughput.XLabel(axis);
            throughput.YLabel("per second");
            throughput.ShowLegend(Alignment.UpperLeft);
            written.Add(Save(throughput, directory, "throughput.png"));
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
