using System.Globalization;
using Spectre.Console;

namespace XRay.LoadTest.Load;

/// <summary>Runs a <see cref="LoadRunner"/> while showing its progress, and carries log lines.</summary>
public interface IRunPresenter
{
    Task<RunResult> RunAsync(LoadRunner runner, string title, CancellationToken cancellationToken);

    void Log(string message);
}

/// <summary>No live display: a line when each run starts and ends (for logs, CI and tests).</summary>
public sealed class PlainPresenter(TextWriter log) : IRunPresenter
{
    public async Task<RunResult> RunAsync(LoadRunner runner, string title, CancellationToken cancellationToken)
    {
        Log($"{title}: running {runner.Profile.Label} ...");
        RunResult result = await runner.RunAsync(cancellationToken).ConfigureAwait(false);
        Log(FormattableString.Invariant(
            $"{title}: {result.Throughput.RequestsPerS:F1} req/s, {result.Throughput.ImagesPerS:F1} img/s, p50 {result.LatencyMs.P50:F2} ms, p99 {result.LatencyMs.P99:F2} ms, {result.Requests.Failed} failed"));
        return result;
    }

    public void Log(string message)
    {
        lock (log) log.WriteLine(message);
    }
}

/// <summary>A live Spectre.Console panel, refreshed four times a second: phase, progress, counts, rate, p50/p99 so far.</summary>
public sealed class LivePresenter(IAnsiConsole console) : IRunPresenter
{
    private static readonly TimeSpan Refresh = TimeSpan.FromMilliseconds(250);

    public async Task<RunResult> RunAsync(LoadRunner runner, string title, CancellationToken cancellationToken)
    {
        RunResult? result = null;
        await console.Live(Render(title, runner.Snapshot(), 0)).AutoClear(false).StartAsync(async context =>
        {
            Task<RunResult> run = runner.RunAsync(cancellationToken);
            long lastCompleted = 0;
            DateTime lastTime = DateTime.UtcNow;
            double rate = 0;
            while (!run.IsCompleted)
            {
                await Task.WhenAny(run, Task.Delay(Refresh, CancellationToken.None)).ConfigureAwait(false);
                ProgressSnapshot snapshot = runner.Snapshot();
                DateTime now = DateTime.UtcNow;
                double seconds = (now - lastTime).TotalSeconds;
                if (seconds >= 1)
                {
                    rate = (snapshot.Completed - lastCompleted) / seconds;
                    lastCompleted = snapshot.Completed;
                    lastTime = now;
                }
                context.UpdateTarget(Render(title, snapshot, rate));
                context.Refresh();
            }
            result = await run.ConfigureAwait(false);
        }).ConfigureAwait(false);
        return result!;
    }

    public void Log(string message) => console.MarkupLine(Markup.Escape(message));

    private static Table Render(string title, ProgressSnapshot s, double rate)
    {
        double fraction = s.TotalS is { } total && total > 0 ? Math.Clamp(s.ElapsedS / total, 0, 1) : 0;
        int filled = (int)Math.Round(fraction * 30);
        string bar = s.TotalS is null ? "" : $"[green]{new string('━', filled)}[/][grey]{new string('━', 30 - filled)}[/] {fraction * 100,3:F0}%";
        var table = new Table().Border(TableBorder.Rounded).Title(Markup.Escape(title));
        foreach (string column in new[] { "phase", "elapsed", "progress", "sent", "done", "failed", "req/s", "p50 ms", "p99 ms" })
        {
            table.AddColumn(new TableColumn(column).RightAligned());
        }
        table.AddRow(
            s.Phase,
            $"{s.ElapsedS:F1}s",
            bar,
            s.Sent.ToString(CultureInfo.InvariantCulture),
            s.Completed.ToString(CultureInfo.InvariantCulture),
            s.Failed > 0 ? $"[red]{s.Failed}[/]" : "0",
            rate.ToString("F1", CultureInfo.InvariantCulture),
            s.Measured > 0 ? s.P50Ms.ToString("F2", CultureInfo.InvariantCulture) : "-",
            s.Measured > 0 ? s.P99Ms.ToString("F2", CultureInfo.InvariantCulture) : "-");
        return table;
    }
}
