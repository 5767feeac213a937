using System.Diagnostics;

namespace XRay.LoadTest.Statistics;

/// <summary>
/// CPU time a process used over an interval. Client and server share this machine's cores, so the load tester
/// reports its own share: a saturated client shows up here rather than as a slow server.
/// </summary>
internal sealed class CpuMeter
{
    private readonly Process _process;
    private TimeSpan _startCpu;
    private long _startTimestamp;

    private CpuMeter(Process process)
    {
        _process = process;
        Restart();
    }

    public static CpuMeter ForCurrentProcess() => new(Process.GetCurrentProcess());

    /// <summary>Null when the process has exited or cannot be read.</summary>
    public static CpuMeter? ForProcess(Process? process)
    {
        if (process is null) return null;
        try
        {
            return process.HasExited ? null : new CpuMeter(process);
        }
        catch (Exception ex) when (ex is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }

    public void Restart()
    {
        _startCpu = Read();
        _startTimestamp = Stopwatch.GetTimestamp();
    }

    public CpuUsage Measure()
    {
        double wall = Stopwatch.GetElapsedTime(_startTimestamp).TotalSeconds;
        double cpu = (Read() - _startCpu).TotalSeconds;
        double cores = wall > 0 ? cpu / wall : 0;
        return new CpuUsage
        {
            CpuSeconds = Math.Round(cpu, 3),
            CoresUsed = Math.Round(cores, 3),
            PercentOfMachine = Math.Round(100 * cores / Environment.ProcessorCount, 1),
        };
    }

    private TimeSpan Read()
    {
        try
        {
            _process.Refresh();
            return _process.TotalProcessorTime;
        }
        catch (Exception ex) when (ex is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            return _startCpu;
        }
    }
}

/// <summary>CPU used over a measured interval.</summary>
public sealed record CpuUsage
{
    /// <summary>User plus system CPU seconds.</summary>
    public double CpuSeconds { get; init; }

    /// <summary>CPU seconds per wall-clock second (2.0 = two cores busy throughout).</summary>
    public double CoresUsed { get; init; }

    /// <summary><see cref="CoresUsed"/> over the machine's logical processors, in percent.</summary>
    public double PercentOfMachine { get; init; }
}
