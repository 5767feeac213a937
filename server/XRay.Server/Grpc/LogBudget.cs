namespace XRay.Server.Grpc;

/// <summary>
/// At most <see cref="LinesPerSecond"/> log lines of one kind per second, so that a flood of refused requests cannot
/// turn into a flood of log lines (each one costs the CPU the refusals were meant to save). The lines left out are
/// counted and reported by the next line let through after the second in which they were left out; the metrics count
/// every request.
/// </summary>
public sealed class LogBudget(int linesPerSecond, TimeProvider time)
{
    private readonly Lock _lock = new();
    private long _windowStart = long.MinValue;
    private int _linesInWindow;
    private long _skipped;

    public int LinesPerSecond { get; } = linesPerSecond > 0 ? linesPerSecond : throw new ArgumentOutOfRangeException(nameof(linesPerSecond));

    /// <summary>
    /// Whether a line may be written now. When it may, <paramref name="skipped"/> is the number of lines left out
    /// since the last line written (to be reported with it), and that count starts again from zero.
    /// </summary>
    public bool TryTake(out long skipped)
    {
        long now = time.GetTimestamp();
        lock (_lock)
        {
            if (_windowStart == long.MinValue || time.GetElapsedTime(_windowStart, now) >= TimeSpan.FromSeconds(1))
            {
                _windowStart = now;
                _linesInWindow = 0;
            }
            if (_linesInWindow >= LinesPerSecond)
            {
                _skipped++;
                skipped = 0;
                return false;
            }
            _linesInWindow++;
            skipped = _skipped;
            _skipped = 0;
            return true;
        }
    }
}
