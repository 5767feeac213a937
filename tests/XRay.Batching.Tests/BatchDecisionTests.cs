namespace XRay.Batching.Tests;

public class BatchDecisionTests
{
    private static readonly DateTimeOffset Oldest = new(2025, 1, 1, 0, 0, 0, TimeSpan.Zero);
    private static readonly TimeSpan Delay = TimeSpan.FromMilliseconds(10);
    private static readonly TimeSpan OneMicrosecond = TimeSpan.FromMicroseconds(1);

    [Fact]
    public void Decide_EmptyQueue_IsIdle()
    {
        var decision = BatchDecision.Decide(0, Oldest, Oldest + Delay * 5, maxBatchSize: 8, Delay);

        Assert.Equal(BatchAction.Idle, decision.Action);
    }

    [Fact]
    public void Decide_NoQueueDelay_DispatchesEverythingQueuedAtOnce()
    {
        var decision = BatchDecision.Decide(3, Oldest, Oldest, maxBatchSize: 8, TimeSpan.Zero);

        Assert.Equal(BatchDecision.Dispatch(3), decision);
    }

    [Fact]
    public void Decide_FullBatch_DispatchesMaxBatchSizeWithoutWaiting()
    {
        var decision = BatchDecision.Decide(20, Oldest, Oldest, maxBatchSize: 8, TimeSpan.FromSeconds(10));

        Assert.Equal(BatchDecision.Dispatch(8), decision);
    }

    [Fact]
    public void Decide_PartialBatchBeforeDelay_WaitsUntilOldestPlusDelay()
    {
        var decision = BatchDecision.Decide(2, Oldest, Oldest + Delay - OneMicrosecond, maxBatchSize: 8, Delay);

        Assert.Equal(BatchDecision.WaitFor(Oldest + Delay), decision);
    }

    [Fact]
    public void Decide_PartialBatchAtDelay_DispatchesWhatIsQueued()
    {
        var decision = BatchDecision.Decide(2, Oldest, Oldest + Delay, maxBatchSize: 8, Delay);

        Assert.Equal(BatchDecision.Dispatch(2), decision);
    }
}
