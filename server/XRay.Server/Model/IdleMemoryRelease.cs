using System.ComponentModel.DataAnnotations;
using System.Runtime;
using Microsoft.Extensions.Options;
using XRay.Model;
using XRay.Server.Telemetry;

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

    /// <summary>
    /// Under continuous load the server is never idle; then the allocator is purged whenever its freed-but-kept pages
    /// (jemalloc dirty pages) exceed this many MB, at most once per <see cref="PurgeMinIntervalSeconds"/>, so RSS stays
    /// bounded without giving back the pages every forward reuses. 0 never does. Default 256; range 0 to 1,048,576.
    /// </summary>
    [Range(0, 1_048_576)]
    public int PurgeDirtyAboveMegabytes { get; set; } = 256;

    /// <summary>Fewest seconds between two purges for <see cref="PurgeDirtyAboveMegabytes"/>. Default 10; range 1 to 3600.</summary>
    [Range(1, 3600)]
    public int PurgeMinIntervalSeconds { get; set; } = 10;
}

/// <summary>
/// Decides when to purge the allocator under load: when its dirty pages exceed a limit, no sooner than an interval
/// after the last purge (a purge costs the next forwards their page faults).
/// </summary>
internal sealed class DirtyLimit(long maxDirtyBytes, TimeSpan minInterval)
{
    private DateTimeOffset? _lastPurge;

    /// <summary>True when the allocator should be purged now; the purge is then counted as done at <paramref name="now"/>.</summary>
    public bool Observe(long dirtyBytes, DateTimeOffset now)
    {
        if (maxDirtyBytes <= 0 || dirtyBytes <= maxDirtyBytes || (_lastPurge is { } last && now - last < minInterval))
        {
            return false;
        }
        _lastPurge = now;
        return true;
    }

    /// <summary>A purge done for another reason (idle) also starts the interval.</summary>
    public void Purged(DateTimeOffset now) => _lastPurge = now;
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
/// Gives memory back after bursts, and bounds what is kept under continuous load. jemalloc runs with decay disabled
/// (freed pages are kept for the next forward, many times faster), and .NET keeps its heap grown, so without this the
/// RSS of a burst would stay for the process's life. Reports the allocator's statistics and each release as metrics.
/// </summary>
public sealed partial class IdleMemoryRelease(
    ModelHost host,
    IOptions<MemoryOptions> options,
    TimeProvider timeProvider,
    XRayMetrics metrics,
    ILogger<IdleMemoryRelease> logger) : IHostedService, IDisposable
{
    public const string IdleReason = "idle";
    public const string DirtyLimitReason = "dirty_limit";

    private static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(1);
    private readonly IdleDetector _detector = new(TimeSpan.FromMilliseconds(options.Value.ReleaseAfterIdleMilliseconds));
    private readonly DirtyLimit _dirtyLimit = new(options.Value.PurgeDirtyAboveMegabytes * 1048576L, TimeSpan.FromSeconds(options.Value.PurgeMinIntervalSeconds));
    private ITimer? _timer;

    /// <summary>Reads the allocator's dirty bytes; null when it cannot tell (not jemalloc). Replaceable by tests.</summary>
    internal Func<long?> DirtyBytes { get; set; } = () => NativeAllocator.ReadStats()?.Dirty;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        metrics.ObserveNativeMemoryFrom(static () => NativeAllocator.ReadStats() is { } stats
            ? [("allocated", stats.Allocated), ("active", stats.Active), ("resident", stats.Resident), ("dirty", stats.Dirty), ("retained", stats.Retained)]
            : []);
        if (options.Value.ReleaseAfterIdleMilliseconds > 0 || options.Value.PurgeDirtyAboveMegabytes > 0)
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
        DateTimeOffset now = timeProvider.GetUtcNow();
        if (options.Value.ReleaseAfterIdleMilliseconds > 0 && _detector.Observe(batcher.BatchesStarted, busy, now))
        {
            long before = Environment.WorkingSet;
            // Aggressive: compacts, including the large object heap, and decommits what it freed.
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
            bool purged = NativeAllocator.ReleaseFreeMemory();
            _dirtyLimit.Purged(now);
            metrics.MemoryReleased(IdleReason);
            LogReleased(logger, before / 1048576, Environment.WorkingSet / 1048576, purged);
            return;
        }
        if (DirtyBytes() is { } dirty && _dirtyLimit.Observe(dirty, now))
        {
            // Only the allocator: the pages it kept beyond the limit go back; the GC heap is left to the GC.
            NativeAllocator.ReleaseFreeMemory();
            metrics.MemoryReleased(DirtyLimitReason);
            LogPurged(logger, dirty / 1048576, options.Value.PurgeDirtyAboveMegabytes);
        }
    }

    public void Dispose() => _timer?.Dispose();

    [LoggerMessage(EventId = 20, Level = LogLevel.Debug, Message = "Idle: released memory, working set {BeforeMb} MB -> {AfterMb} MB (allocator purged: {Purged})")]
    private static partial void LogReleased(ILogger logger, long beforeMb, long afterMb, bool purged);

    [LoggerMessage(EventId = 21, Level = LogLevel.Debug, Message = "Under load: purged the allocator's {DirtyMb} MB of freed pages (over Memory:PurgeDirtyAboveMegabytes = {LimitMb})")]
    private static partial void LogPurged(ILogger logger, long dirtyMb, int limitMb);
}
