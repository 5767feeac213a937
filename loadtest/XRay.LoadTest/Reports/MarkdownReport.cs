using System.Globalization;
using System.Text;
using XRay.LoadTest.Bench;
using XRay.LoadTest.Load;

namespace XRay.LoadTest.Reports;

/// <summary>report.md: the same numbers as report.json, as tables a person reads.</summary>
public static class MarkdownReport
{
    private static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    public static string Render(LoadTestReport report)
    {
        var md = new StringBuilder();
        md.AppendLine(Invariant, $"# xray-loadtest {report.Kind}");
        md.AppendLine();
        md.AppendLine(Invariant, $"`{report.Command}` — {report.StartedUtc:yyyy-MM-dd HH:mm} UTC, {report.Machine.ProcessorCount} cores, {report.Machine.Os}{(report.Machine.LoadAverage1m is { } load ? $", load average {load:0.##} at start" : "")}");
        if (report.Model is { } model)
        {
            md.AppendLine();
            md.AppendLine(Invariant, $"Model {model.Name} {model.Version} ({model.Architecture}) on {model.Device}, {model.Precision}; server MaxBatchSize {model.MaxBatchSize}, max queue delay {model.MaxQueueDelayUs} us, {model.ModelInstances} instance(s).");
        }
        if (report.Runs.Count > 0)
        {
            RunResult first = report.Runs[0];
            md.AppendLine();
            md.AppendLine(Invariant, $"{Describe(first)}.");
            md.AppendLine();
            RunTable(md, report.Runs.Select(run => (run.Label, run)));
        }
        if (report.Sweep is { } sweep)
        {
            md.AppendLine();
            string ending = sweep.StoppedAt is { } at ? $"stopped at {F(at)} ({sweep.StopReason})" : "every level ran";
            string best = sweep.BestWithinSlo is { } b ? $"; best throughput within it: {b}." : "; no level met it.";
            md.AppendLine(Invariant, $"Sweep over {sweep.Over}, threshold p{sweep.SloPercentile:0.#} ≤ {F(sweep.SloMs)} ms and errors ≤ {F(sweep.MaxErrorRate * 100)}%: {ending}{best}");
        }
        if (report.Bench is { } bench) Bench(md, bench);
        return md.ToString();
    }

    /// <summary>One row per run: throughput, latency percentiles, errors, the server's batching and the CPU split.</summary>
    public static void RunTable(StringBuilder md, IEnumerable<(string Name, RunResult Run)> rows)
    {
        md.AppendLine("| load | req/s | img/s | p50 ms | p90 ms | p95 ms | p99 ms | p99.9 ms | max ms | errors | batch mean | queue p50 ms | compute p50 ms | model busy | client CPU | server CPU |");
        md.AppendLine("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        var statuses = new List<string>();
        foreach (var (name, run) in rows)
        {
            var l = run.LatencyMs;
            string errors = run.Requests.Failed + run.Requests.Dropped == 0 ? "0" : $"{run.Requests.Failed + run.Requests.Dropped} ({F(run.Requests.ErrorRate * 100)}%)";
            md.AppendLine(Invariant,
                $"| {name} | {F(run.Throughput.RequestsPerS)} | {F(run.Throughput.ImagesPerS)} | {F(l.P50)} | {F(l.P90)} | {F(l.P95)} | {F(l.P99)} | {F(l.P999)} | {F(l.Max)} | {errors} | {F(run.Server.BatchSize.Mean)} | {F(run.Server.QueueMs.P50)} | {F(run.Server.ComputeMs.P50)} | {run.Server.ModelBusyFraction * 100:F0}% | {Cpu(run.ClientCpu)} | {(run.ServerCpu is { } s ? Cpu(s) : "-")} |");
            if (run.StatusCodes.Keys.Any(code => code != "OK") || run.Requests.Dropped > 0)
            {
                statuses.Add($"{name}: {string.Join(", ", run.StatusCodes.Select(pair => $"{pair.Key} {pair.Value}"))}{(run.Requests.Dropped > 0 ? $", dropped {run.Requests.Dropped}" : "")}");
            }
        }
        md.AppendLine();
        md.AppendLine("Latency is client-side, per request; queue and compute are the server's, per image; CPU is cores used (of the machine).");
        foreach (string status in statuses) md.AppendLine(Invariant, $"- status codes {status}");
    }

    private static void Bench(StringBuilder md, BenchResult bench)
    {
        if (bench.Compared is { Count: > 0 } compared)
        {
            SideBySide(md, compared);
            foreach (BenchResult one in compared)
            {
                md.AppendLine();
                md.AppendLine(Invariant, $"# {Configuration(one)}");
                OneBench(md, one);
            }
            return;
        }

        OneBench(md, bench);
    }

    private static string Configuration(BenchResult bench)
    {
        ModelSummary model = bench.Model;
        string api = (bench.Batched ?? bench.Unbatched)?.Run.Api ?? "unary";
        return $"{Configuration(model)}{(api == "unary" ? "" : $", api {api}")}";
    }

    private static string Configuration(ModelSummary model) => $"{(model.Runtime.Length > 0 ? model.Runtime : "torch")} {model.Precision}";

    /// <summary>Every configuration's headline numbers in one table, each against the first.</summary>
    private static void SideBySide(StringBuilder md, IReadOnlyList<BenchResult> compared)
    {
        md.AppendLine();
        md.AppendLine("## Configurations side by side");
        md.AppendLine();
        int[] sizes = compared.SelectMany(b => b.Raw.Select(p => p.BatchSize)).Distinct().Order().ToArray();
        md.AppendLine("| configuration | " + string.Join(" | ", sizes.Select(size => $"raw b{size} img/s")) +
            " | raw b1 forward p50 ms | unbatched img/s | batched img/s | batched / raw same sizes | batched / raw best | one caller p50 ms | p50 over raw b1 ms |");
        md.AppendLine("|---|" + string.Concat(sizes.Select(_ => "--:|")) + "--:|--:|--:|--:|--:|--:|--:|");
        foreach (BenchResult b in compared)
        {
            string raw = string.Join(" | ", sizes.Select(size => F(b.Raw.FirstOrDefault(p => p.BatchSize == size)?.ImagesPerS)));
            BenchRatios r = b.Ratios;
            md.AppendLine(Invariant,
                $"| {Configuration(b)} | {raw} | {F(r.RawB1ForwardP50Ms)} | {F(b.Unbatched?.Run.Throughput.ImagesPerS)} | {F(b.Batched?.Run.Throughput.ImagesPerS)} | " +
                $"{F(r.BatchedOverRawSameBatchSizes)} | {F(Divide(b.Batched?.Run.Throughput.ImagesPerS, r.RawBestImagesPerS))} | {F(r.ServedC1P50Ms)} | {F(r.OverheadP50Ms)} |");
        }

        BenchResult first = compared[0];
        md.AppendLine();
        md.AppendLine(Invariant, $"Against {Configuration(first)}:");
        md.AppendLine();
        md.AppendLine("| configuration | raw best | batched served | one caller p50 (lower is better) |");
        md.AppendLine("|---|--:|--:|--:|");
        foreach (BenchResult b in compared.Skip(1))
        {
            md.AppendLine(Invariant,
                $"| {Configuration(b)} | {F(Divide(b.Ratios.RawBestImagesPerS, first.Ratios.RawBestImagesPerS))}x | " +
                $"{F(Divide(b.Batched?.Run.Throughput.ImagesPerS, first.Batched?.Run.Throughput.ImagesPerS))}x | {F(Divide(b.Ratios.ServedC1P50Ms, first.Ratios.ServedC1P50Ms))}x |");
        }
    }

    private static void OneBench(StringBuilder md, BenchResult bench)
    {
        md.AppendLine();
        md.AppendLine(Invariant, $"Model {bench.Model.Name} {bench.Model.Version} ({bench.Model.Architecture}) on {Configuration(bench.Model)}, {bench.Model.Device}.");
        md.AppendLine();
        md.AppendLine(Invariant, $"## (a) Raw model, in-process {(bench.Model.Runtime == "onnxruntime" ? "OnnxRuntimeRunner" : "ModelRunner")} ({bench.RawAllocator})");
        md.AppendLine();
        md.AppendLine("| batch | img/s | forward p50 ms | forward p99 ms | forwards |");
        md.AppendLine("|--:|--:|--:|--:|--:|");
        foreach (RawPoint p in bench.Raw)
        {
            md.AppendLine(Invariant, $"| {p.BatchSize} | {F(p.ImagesPerS)} | {F(p.ForwardMs.P50)} | {F(p.ForwardMs.P99)} | {p.Iterations} |");
        }

        RunResult? any = bench.Batched?.Run ?? bench.Unbatched?.Run;
        if (any is not null)
        {
            md.AppendLine();
            md.AppendLine("## (b) unbatched and (c) batched server");
            md.AppendLine();
            md.AppendLine(Invariant, $"{Describe(any)}.");
            md.AppendLine();
            var rows = new List<(string, RunResult)>();
            if (bench.Unbatched is { } u) rows.Add(($"(b) MaxBatchSize={u.MaxBatchSize}", u.Run));
            if (bench.Batched is { } b) rows.Add(($"(c) MaxBatchSize={b.MaxBatchSize}", b.Run));
            if (bench.Unbatched?.ProbeC1 is { } probe) rows.Add(($"(b) one caller (c=1)", probe));
            RunTable(md, rows);
            foreach (ServedPhase phase in new[] { bench.Unbatched, bench.Batched }.OfType<ServedPhase>())
            {
                md.AppendLine(Invariant, $"- server `{phase.ServerCommand ?? phase.Target}`{(phase.ServerAllocator is { } a ? $", allocator {a}" : "")}");
            }
        }

        BenchRatios r = bench.Ratios;
        md.AppendLine();
        md.AppendLine("## Ratios");
        md.AppendLine();
        md.AppendLine("| ratio | value | meaning |");
        md.AppendLine("|---|--:|---|");
        md.AppendLine(Invariant, $"| served / raw, unbatched | {F(r.UnbatchedOverRawB1)} | unbatched server img/s over raw img/s at batch 1 |");
        md.AppendLine(Invariant, $"| served / raw, batched | {F(r.BatchedOverRawSameBatchSizes)} | batched server img/s over raw img/s for the same batch sizes ({F(r.BatchedRawEquivalentImagesPerS)} img/s) |");
        md.AppendLine(Invariant, $"| batched / unbatched | {F(r.BatchedOverUnbatched)} | throughput, same concurrency and payload (p50 latency ratio {F(r.BatchedOverUnbatchedP50)}) |");
        md.AppendLine(Invariant, $"| batched / raw best | {F(Divide(bench.Batched?.Run.Throughput.ImagesPerS, r.RawBestImagesPerS))} | against the best raw throughput measured ({F(r.RawBestImagesPerS)} img/s) |");
        md.AppendLine(Invariant, $"| p50 overhead, served over raw batch 1 | {(r.OverheadP50Ms is { } o ? $"{o:+0.###;-0.###} ms ({F(r.OverheadP50Percent)}%)" : "-")} | one caller, unbatched server p50 {F(r.ServedC1P50Ms)} ms vs raw forward p50 {F(r.RawB1ForwardP50Ms)} ms; inside the server (queue + compute − raw) {F(r.ServerSideOverheadP50Ms)} ms |");
    }

    private static string Describe(RunResult run) =>
        (run.Mode == "closed" ? $"Closed loop, {run.Concurrency} callers" : $"Open loop, {run.Arrival} arrivals at {F(run.RateRps)}/s")
        + $", {run.Api}, {run.Connections} connection(s) to {string.Join(", ", run.Targets)}; payload {run.Payload.Kind}"
        + (run.Payload.Channels > 0 ? $" ({run.Payload.Channels} channel(s))" : "")
        + $" x{run.Payload.ImagesPerRequest} ({run.Payload.Source}, {run.Payload.RequestBytes / 1024.0:F0} KiB/request); warm-up {F(run.WarmupS)} s, measured {F(run.DurationS)} s";

    private static double? Divide(double? a, double? b) => a is { } x && b is { } y && y > 0 ? Math.Round(x / y, 3) : null;

    private static string Cpu(XRay.LoadTest.Statistics.CpuUsage cpu) => string.Create(Invariant, $"{cpu.CoresUsed:F2} ({cpu.PercentOfMachine:F0}%)");

    private static string F(double? value) => value switch
    {
        null => "-",
        { } v when Math.Abs(v) >= 100 => v.ToString("F0", Invariant),
        { } v when Math.Abs(v) >= 10 => v.ToString("F1", Invariant),
        { } v => v.ToString("0.###", Invariant),
    };
}
