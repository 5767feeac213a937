using System.Diagnostics.Metrics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Time.Testing;
using XRay.Server.Model;
using XRay.Server.Telemetry;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests;

/// <summary>
/// Memory given back: once after a quiet period (idle), and under continuous load whenever the allocator's freed pages
/// exceed the limit, no more often than the interval. Observed through the releases counter on a fake clock.
/// </summary>
public sealed class MemoryReleaseTests
{
    private static readonly DateTimeOffset T0 = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
    private const long Mb = 1048576;

    [Fact]
    public void DirtyLimit_OverTheLimit_PurgesAtMostOncePerInterval()
    {
        var limit = new DirtyLimit(256 * Mb, TimeSpan.FromSeconds(10));

        Assert.False(limit.Observe(256 * Mb, T0));
        Assert.True(limit.Observe(257 * Mb, T0));
        Assert.False(limit.Observe(900 * Mb, T0.AddSeconds(9.9)));
        Assert.True(limit.Observe(900 * Mb, T0.AddSeconds(10)));
        Assert.False(limit.Observe(10 * Mb, T0.AddSeconds(30)));
    }

    [Fact]
    public void DirtyLimit_AnIdleRelease_StartsTheInterval_ZeroNeverPurges()
    {
        var limit = new DirtyLimit(256 * Mb, TimeSpan.FromSeconds(10));
        limit.Purged(T0);
        Assert.False(limit.Observe(900 * Mb, T0.AddSeconds(5)));
        Assert.True(limit.Observe(900 * Mb, T0.AddSeconds(10)));

        Assert.False(new DirtyLimit(0, TimeSpan.FromSeconds(1)).Observe(long.MaxValue, T0));
    }

    private static async Task<(TestServer Server, FakeTimeProvider Clock, MetricCollector<long> Releases)> StartAsync(FakeModelBackend backend)
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        TestServer server = await TestServer.StartAsync(new FakeModelBackendFactory(backend),
            builder => builder.Services.Replace(ServiceDescriptor.Singleton<TimeProvider>(clock)), waitUntilServing: true);
        var releases = new MetricCollector<long>(server.App.Services.GetRequiredService<IMeterFactory>(), XRayMetrics.MeterName, XRayMetrics.MemoryReleasesName);
        return (server, clock, releases);
    }

    private static long Count(MetricCollector<long> releases, string reason) => releases.GetMeasurementSnapshot()
        .Where(m => Equals(m.Tags.GetValueOrDefault(XRayMetrics.MemoryReleaseReasonTag), reason)).Sum(m => m.Value);

    private static void Tick(FakeTimeProvider clock, int seconds)
    {
        // One second at a time: the release is polled once a second.
        for (int i = 0; i < seconds; i++) clock.Advance(TimeSpan.FromSeconds(1));
    }

    [Fact]
    public async Task IdleRelease_RunsOnceAfterTheQuietPeriod_AgainOnlyAfterMoreBatches()
    {
        var backend = new FakeModelBackend();
        var (server, clock, releases) = await StartAsync(backend);
        await using var _ = server;
        await server.Stub.ClassifyAsync(Request(1)).ResponseAsync.WaitAsync(TestServer.Timeout);

        // The first poll sees the batch; the release comes 5 s of quiet later.
        Tick(clock, 5);
        Assert.Equal(0, Count(releases, IdleMemoryRelease.IdleReason));
        Tick(clock, 1);
        Assert.Equal(1, Count(releases, IdleMemoryRelease.IdleReason));
        Tick(clock, 30);
        Assert.Equal(1, Count(releases, IdleMemoryRelease.IdleReason));

        await server.Stub.ClassifyAsync(Request(2)).ResponseAsync.WaitAsync(TestServer.Timeout);
        Tick(clock, 7);
        Assert.Equal(2, Count(releases, IdleMemoryRelease.IdleReason));
    }

    [Fact]
    public async Task UnderLoad_DirtyPagesOverTheLimit_PurgedAtMostEveryIntervalNeverIdle()
    {
        var backend = new FakeModelBackend();
        var (server, clock, releases) = await StartAsync(backend);
        await using var _ = server;
        IdleMemoryRelease release = server.App.Services.GetServices<IHostedService>().OfType<IdleMemoryRelease>().Single();
        long dirty = 100 * Mb;
        release.DirtyBytes = () => dirty;

        using (Held(backend))
        {
            // A batch that never ends: busy the whole time, so never idle.
            Task<int> started = NextBatchStarted(backend);
            var running = server.Stub.ClassifyAsync(Request(1)).ResponseAsync;
            await started.WaitAsync(TestServer.Timeout);
            Tick(clock, 3);
            Assert.Equal(0, Count(releases, IdleMemoryRelease.DirtyLimitReason));

            dirty = 300 * Mb;
            Tick(clock, 1);
            Assert.Equal(1, Count(releases, IdleMemoryRelease.DirtyLimitReason));
            Tick(clock, 9);
            Assert.Equal(1, Count(releases, IdleMemoryRelease.DirtyLimitReason));
            Tick(clock, 1);
            Assert.Equal(2, Count(releases, IdleMemoryRelease.DirtyLimitReason));
            Assert.Equal(0, Count(releases, IdleMemoryRelease.IdleReason));
            backend.Release();
            await running.WaitAsync(TestServer.Timeout);
        }
    }
}
