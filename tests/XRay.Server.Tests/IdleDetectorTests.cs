using XRay.Server.Model;

namespace XRay.Server.Tests;

public class IdleDetectorTests
{
    private static readonly DateTimeOffset T0 = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
    private readonly IdleDetector _detector = new(TimeSpan.FromSeconds(5));

    [Fact]
    public void Observe_QuietForTheDelayAfterBatches_ReleasesOnce()
    {
        Assert.False(_detector.Observe(batchesStarted: 10, busy: false, T0));
        Assert.False(_detector.Observe(10, false, T0.AddSeconds(4.9)));

        Assert.True(_detector.Observe(10, false, T0.AddSeconds(5)));
        Assert.False(_detector.Observe(10, false, T0.AddSeconds(6)));
        Assert.False(_detector.Observe(10, false, T0.AddMinutes(10)));
    }

    [Fact]
    public void Observe_NewBatches_RestartTheQuietPeriodAndAllowAnotherRelease()
    {
        _detector.Observe(1, false, T0);
        Assert.True(_detector.Observe(1, false, T0.AddSeconds(5)));

        Assert.False(_detector.Observe(2, false, T0.AddSeconds(20)));
        Assert.False(_detector.Observe(2, false, T0.AddSeconds(24)));
        Assert.True(_detector.Observe(2, false, T0.AddSeconds(25)));
    }

    [Fact]
    public void Observe_BusyWithoutNewBatches_IsNotIdle()
    {
        // A long batch, or a queue waiting on it: no batch started, but not idle.
        _detector.Observe(3, false, T0);
        Assert.False(_detector.Observe(3, busy: true, T0.AddSeconds(10)));
        Assert.False(_detector.Observe(3, false, T0.AddSeconds(14)));
        Assert.True(_detector.Observe(3, false, T0.AddSeconds(15)));
    }
}
