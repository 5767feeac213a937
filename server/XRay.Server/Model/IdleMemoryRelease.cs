using System.ComponentModel.DataAnnotations;
using System.Runtime;
using Microsoft.Extensions.Options;
using XRay.Model;

namespace XRay.Server.Model;

/// <summary>When memory taken during a burst goes back to the system. Configuration section <c>Memory</c>.</summary>
public sealed class MemoryOptions
{
    public const string SectionName = "Memory";

    /// <summary>
    /// Milliseconds without a batch after which the server gives free memory back to the system once (a full garbage
    /// collection, then jemalloc's free pages), so RSS falls after a burst. 0 never does. Default 5000; range 0 to
    /// 3,600,000. Checked once a second.
    /// </summary>
    [Range(0, 3_600_000)]
    public int ReleaseAfterIdleMilliseconds { get; set; } = 5000;
}

/// <summary>
/// Decides when to release memory: once per quiet period, after the configured time without a batch. Kept apart from
/// the timer so that the policy is a pure function of what it is shown.
/// </summary>
internal sealed class IdleDetector(TimeSpan idleDelay)
{
    private long _batchesSeen = -1;
    private DateTimeOffset _lastActivity;
    private bool _usedSinceRelease;

    /// <summary>True when memory should be released now; then not again until another batch runs.</summary>
    public bool Observe(long batchesStarted, bool busy, DateTimeOffset now)
    {
        if (batchesStarted != _batchesSeen || busy)
        {
            // The first look counts as activity: start-up and warm-up allocate too.
            _batchesSeen = batchesStarted;
            _lastActivity = now;
            _usedSinceRelease = true;
            return false;
        }

        if (!_usedSinceRelease || now - _lastActivity < idleDelay)
        {
            return false;
        }

        _usedSinceRelease = false;
        return true;
    }
}

/// <summary>
/// Gives memory back after bursts. jemalloc runs with decay disabled (freed pages are kept for the next forward, many
/// times faster), and .NET keeps its heap grown, so without this the RSS of a burst would stay for the process's life.
/// </summary>
public sealed partial class IdleMemoryRelease(
    ModelHost host,
    IOptions<MemoryOptions> options,
    TimeProvider timeProvider,
    ILogger<IdleMemoryRelease> logger) : IHostedService, IDisposable
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(1);
    private readonly IdleDetector _detector = new(TimeSpan.FromMilliseconds(options.Value.ReleaseAfterIdleMilliseconds));
    private ITimer? _timer;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (options.Value.ReleaseAfterIdleMilliseconds > 0)
        {
            _timer = timeProvider.CreateTimer(static s => ((IdleMemoryRelease)s!).Poll(), this, PollInterval, PollInterval);
        }
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        _timer?.Dispose();
        return Task.CompletedTask;
    }

    private void Poll()
    {
        if (host.Current is not { } model)
        {
            return;
        }
        var batcher = model.Batcher;
        bool busy = batcher.RunningBatches > 0 || batcher.QueuedItems > 0 || batcher.ReservedItems > 0;
        if (!_detector.Observe(batcher.BatchesStarted, busy, timeProvider.GetUtcNow()))
        {
            return;
        }

        long before = Environment.WorkingSet;
        // Aggressive: compacts, including the large object heap, and decommits what it freed.
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        bool purged = NativeAllocator.ReleaseFreeMemory();
        LogReleased(logger, before / 1048576, Environment.WorkingSet / 1048576, purged);
    }

    public void Dispose() => _timer?.Dispose();

    [LoggerMessage(EventId = 20, Level = LogLevel.Debug, Message = "Idle: released memory, working set {BeforeMb} MB -> {AfterMb} MB (allocator purged: {Purged})")]
    private static partial void LogReleased(ILogger logger, long beforeMb, long afterMb, bool purged);
}
