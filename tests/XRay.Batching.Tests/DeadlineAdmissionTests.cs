namespace XRay.Batching.Tests;

/// <summary>
/// Deadline-aware admission: a request whose deadline is shorter than the estimated wait (items ahead plus its own, at
/// the measured compute time per item) is refused at once instead of timing out in the queue.
/// </summary>
public class DeadlineAdmissionTests : BatcherTestBase
{
    private DynamicBatcher<int, string> CreateBatcher(int maxBatchSize = 2, int maxQueueSize = 16, int modelInstances = 1)
    {
        _batcher = new DynamicBatcher<int, string>(_handler, new BatchingOptions
        {
            MaxBatchSize = maxBatchSize,
            MaxQueueSize = maxQueueSize,
            ModelInstances = modelInstances,
        }, _clock, _observer);
        return _batcher;
    }

    /// <summary>Runs one batch of <paramref name="items"/> items that takes <paramref name="duration"/> on the fake clock.</summary>
    private async Task RunBatchAsync(DynamicBatcher<int, string> batcher, int items, TimeSpan duration)
    {
        var request = batcher.EnqueueAsync(Enumerable.Range(100, items).ToArray());
        var call = await _handler.NextCallAsync();
        _clock.Advance(duration);
        call.Succeed();
        await request.Bounded();
    }

    [Fact]
    public void EstimatedWait_BeforeAnyBatch_IsZeroAndAnyDeadlineIsAdmitted()
    {
        var batcher = CreateBatcher();

        Assert.Equal(TimeSpan.Zero, batcher.EstimatedWait(1));
        using var reservation = batcher.Reserve(1, deadline: _clock.GetUtcNow() + TimeSpan.FromTicks(1));
        Assert.Equal(1, batcher.ReservedItems);
    }

    [Fact]
    public async Task EstimatedWait_ItemsAheadAndOwn_AtTheMovingAverageTimePerItem()
    {
        var batcher = CreateBatcher(maxBatchSize: 2);
        await RunBatchAsync(batcher, 2, TimeSpan.FromMilliseconds(100));
        Assert.Equal(TimeSpan.FromMilliseconds(50), batcher.EstimatedWait(1));

        // A slower batch moves the average a fifth of the way: 50 * 0.8 + 100 * 0.2 = 60 ms per item.
        await RunBatchAsync(batcher, 1, TimeSpan.FromMilliseconds(100));
        Assert.Equal(60, batcher.EstimatedWait(1).TotalMilliseconds, precision: 6);

        // Waiting and reserved items count ahead; a running batch's items do not.
        var running = batcher.EnqueueAsync([1, 2]);
        var call = await _handler.NextCallAsync();
        var queued = batcher.EnqueueAsync([3, 4, 5]);
        using var reserved = batcher.Reserve(2);
        Assert.Equal((3 + 2 + 1) * 60, batcher.EstimatedWait(1).TotalMilliseconds, precision: 6);
        call.Succeed();
        (await _handler.NextCallAsync()).Succeed();
        (await _handler.NextCallAsync()).Succeed();
        await Task.WhenAll(running, queued).Bounded();
    }

    [Fact]
    public async Task EstimatedWait_TwoModelInstances_Halved()
    {
        var batcher = CreateBatcher(maxBatchSize: 2, modelInstances: 2);
        await RunBatchAsync(batcher, 2, TimeSpan.FromMilliseconds(100));

        using var reserved = batcher.Reserve(3);
        Assert.Equal((3 + 1) * 50 / 2, batcher.EstimatedWait(1).TotalMilliseconds, precision: 6);
    }

    [Fact]
    public async Task Reserve_DeadlineShorterThanEstimatedWait_RefusedAtOnceWithoutTakingRoom()
    {
        var batcher = CreateBatcher(maxBatchSize: 2);
        await RunBatchAsync(batcher, 2, TimeSpan.FromMilliseconds(100));
        using var ahead = batcher.Reserve(4);
        DateTimeOffset now = _clock.GetUtcNow();

        // (4 + 1) items at 50 ms: 250 ms.
        var error = Assert.Throws<BatchRejectedException>(() => batcher.Reserve(1, deadline: now + TimeSpan.FromMilliseconds(249)));

        Assert.Equal(RejectionReason.DeadlineUnmeetable, error.Reason);
        Assert.Equal("deadline too short: 249 ms left, but the estimated wait is 250 ms (4 images waiting ahead, 50.0 ms per image)", error.Message);
        Assert.Equal(4, batcher.ReservedItems);
        Assert.Contains($"rejected {RejectionReason.DeadlineUnmeetable} 1", _observer.Events);
        using var admitted = batcher.Reserve(1, deadline: now + TimeSpan.FromMilliseconds(250));
        Assert.Equal(5, batcher.ReservedItems);
    }

    [Fact]
    public async Task EnqueueAsync_DeadlineShorterThanEstimatedWait_RefusedAndNeverComputed()
    {
        var batcher = CreateBatcher(maxBatchSize: 2);
        await RunBatchAsync(batcher, 2, TimeSpan.FromMilliseconds(100));
        int calls = _handler.CallCount;
        var running = batcher.EnqueueAsync([1, 2]);
        var call = await _handler.NextCallAsync();
        var queued = batcher.EnqueueAsync([3, 4]);

        // (2 + 2) items at 50 ms: 200 ms.
        var refused = batcher.EnqueueAsync([5, 6], deadline: _clock.GetUtcNow() + TimeSpan.FromMilliseconds(150));

        var error = await Assert.ThrowsAsync<BatchRejectedException>(() => refused).Bounded();
        Assert.Equal(RejectionReason.DeadlineUnmeetable, error.Reason);
        Assert.Equal(2, batcher.QueuedItems);
        call.Succeed();
        var next = await _handler.NextCallAsync();
        next.Succeed();
        await Task.WhenAll(running, queued).Bounded();
        Assert.Equal([3, 4], next.Inputs);
        Assert.Equal(calls + 2, _handler.CallCount);
    }

    [Fact]
    public async Task WouldAdmit_SaysWhyWithoutTakingRoomOrCountingARejection()
    {
        var batcher = CreateBatcher(maxBatchSize: 2, maxQueueSize: 4);
        await RunBatchAsync(batcher, 2, TimeSpan.FromMilliseconds(100));
        int events = _observer.Events.Count;

        Assert.True(batcher.WouldAdmit(1, null, out _, out string? none));
        Assert.Null(none);
        Assert.False(batcher.WouldAdmit(1, _clock.GetUtcNow() + TimeSpan.FromMilliseconds(10), out RejectionReason reason, out string? message));
        Assert.Equal(RejectionReason.DeadlineUnmeetable, reason);
        Assert.StartsWith("deadline too short: 10 ms left, but the estimated wait is 50 ms", message);

        using var full = batcher.Reserve(4);
        Assert.False(batcher.WouldAdmit(1, null, out reason, out message));
        Assert.Equal(RejectionReason.QueueFull, reason);
        Assert.Equal("queue full: 4 of 4 images waiting, request has 1", message);
        Assert.Equal(4, batcher.ReservedItems);
        Assert.Equal(events, _observer.Events.Count);
    }
}
