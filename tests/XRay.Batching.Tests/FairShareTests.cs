using Microsoft.Extensions.Time.Testing;

namespace XRay.Batching.Tests;

/// <summary>Round robin between callers, and reservations taken before the items exist.</summary>
public class FairShareTests : BatcherTestBase
{
    private DynamicBatcher<int, string> CreateBatcher(int maxBatchSize, int maxQueueSize = 512)
    {
        _batcher = new DynamicBatcher<int, string>(_handler, new BatchingOptions
        {
            MaxBatchSize = maxBatchSize,
            MaxQueueSize = maxQueueSize,
        }, _clock, _observer);
        return _batcher;
    }

    /// <summary>Starts a batch of one item and leaves it running, so that what is enqueued next waits in the queue.</summary>
    private static async Task<(Task<ItemResult<string>[]> Request, BatchCall Call)> OccupyModelAsync(
        DynamicBatcher<int, string> batcher, FakeBatchHandler handler)
    {
        var request = batcher.EnqueueAsync([-1], caller: "occupier");
        return (request, await handler.NextCallAsync());
    }

    [Fact]
    public async Task EnqueueAsync_BackloggedCaller_OtherCallersImageRunsInNextBatch()
    {
        var batcher = CreateBatcher(maxBatchSize: 8);
        var (first, running) = await OccupyModelAsync(batcher, _handler);
        // One stream with 256 single-image requests in flight, then a unary caller.
        var stream = Enumerable.Range(0, 256).Select(i => batcher.EnqueueAsync([i], caller: "stream")).ToArray();
        var unary = batcher.EnqueueAsync([1000], caller: "unary");

        running.Succeed();
        var next = await _handler.NextCallAsync();

        Assert.Equal([0, 1000, 1, 2, 3, 4, 5, 6], next.Inputs);
        next.Succeed();
        Assert.Equal("out-1000", Assert.Single(await unary.Bounded()).Output);
        for (var batch = 0; batch < 32; batch++)
        {
            var call = await _handler.NextCallAsync();
            call.Succeed();
        }

        await Task.WhenAll(stream.Append(first)).Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_ThreeCallers_TakeOneItemEachInTurnAcrossBatches()
    {
        var batcher = CreateBatcher(maxBatchSize: 2);
        var (first, running) = await OccupyModelAsync(batcher, _handler);
        var a = batcher.EnqueueAsync([10, 11, 12], caller: "a");
        var b = batcher.EnqueueAsync([20, 21], caller: "b");
        var c = batcher.EnqueueAsync([30], caller: "c");
        var a2 = batcher.EnqueueAsync([13], caller: "a");

        running.Succeed();
        var batches = new List<int[]>();
        for (var i = 0; i < 4; i++)
        {
            var call = await _handler.NextCallAsync();
            batches.Add(call.Inputs);
            call.Succeed();
        }

        // The turn is remembered from one batch to the next; within a caller, first in first out.
        Assert.Equal([[10, 20], [30, 11], [21, 12], [13]], batches);
        Assert.Equal(["out-10", "out-11", "out-12"], (await a.Bounded()).Select(r => r.Output));
        Assert.Equal(["out-20", "out-21"], (await b.Bounded()).Select(r => r.Output));
        await Task.WhenAll(first, c, a2).Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_SameCallerKey_StaysFirstInFirstOut()
    {
        var batcher = CreateBatcher(maxBatchSize: 4);
        var (first, running) = await OccupyModelAsync(batcher, _handler);
        // Keys compare by value: two equal strings are one caller.
        var one = batcher.EnqueueAsync([1, 2, 3], caller: new string('x', 3));
        var two = batcher.EnqueueAsync([4, 5], caller: "xxx");

        running.Succeed();
        var next = await _handler.NextCallAsync();
        next.Succeed();

        Assert.Equal([1, 2, 3, 4], next.Inputs);
        await one.Bounded();
        (await _handler.NextCallAsync()).Succeed();
        await Task.WhenAll(first, two).Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_CancelledCallerRequest_LeavesOthersTurnsIntact()
    {
        var batcher = CreateBatcher(maxBatchSize: 4);
        var (first, running) = await OccupyModelAsync(batcher, _handler);
        using var cancel = new CancellationTokenSource();
        var gone = batcher.EnqueueAsync([1, 2], cancellationToken: cancel.Token, caller: "a");
        var b = batcher.EnqueueAsync([20, 21, 22], caller: "b");
        var a = batcher.EnqueueAsync([3], caller: "a");

        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => gone).Bounded();
        running.Succeed();
        var next = await _handler.NextCallAsync();
        next.Succeed();

        Assert.Equal([3, 20, 21, 22], next.Inputs);
        await Task.WhenAll(first, a, b).Bounded();
    }

    [Fact]
    public async Task Reserve_CountsAgainstQueueSize_RefusesWhatWouldNotFit()
    {
        var batcher = CreateBatcher(maxBatchSize: 2, maxQueueSize: 4);
        using var held = batcher.Reserve(3);

        var error = Assert.Throws<BatchRejectedException>(() => batcher.Reserve(2));
        var enqueued = batcher.EnqueueAsync([1, 2]);

        Assert.Equal(RejectionReason.QueueFull, error.Reason);
        Assert.Equal("queue full: 3 of 4 images waiting, request has 2", error.Message);
        Assert.Equal(RejectionReason.QueueFull, (await Assert.ThrowsAsync<BatchRejectedException>(() => enqueued).Bounded()).Reason);
        Assert.Equal(["rejected QueueFull 2", "rejected QueueFull 2"], _observer.Events);
        Assert.Equal(3, batcher.ReservedItems);
        Assert.Equal(0, _handler.CallCount);
    }

    [Fact]
    public async Task Reserve_Disposed_GivesTheRoomBack()
    {
        var batcher = CreateBatcher(maxBatchSize: 4, maxQueueSize: 4);
        batcher.Reserve(4).Dispose();

        using var again = batcher.Reserve(4);
        var results = batcher.EnqueueAsync(again, [1, 2, 3, 4]);
        again.Dispose(); // used already: no effect
        var call = await _handler.NextCallAsync();
        call.Succeed();

        Assert.Equal(4, (await results.Bounded()).Length);
        Assert.Equal(0, batcher.ReservedItems);
        Assert.Equal(0, batcher.QueuedItems);
    }

    [Fact]
    public async Task EnqueueAsync_Reservation_MovesRoomFromReservedToQueuedWithoutSecondCheck()
    {
        var batcher = CreateBatcher(maxBatchSize: 2, maxQueueSize: 4);
        var (first, running) = await OccupyModelAsync(batcher, _handler);
        using var reservation = batcher.Reserve(4, caller: "a");
        var results = batcher.EnqueueAsync(reservation, [1, 2, 3, 4]);

        Assert.Equal(0, batcher.ReservedItems);
        Assert.Equal(4, batcher.QueuedItems);
        Assert.Throws<InvalidOperationException>(() => { _ = batcher.EnqueueAsync(reservation, [5, 6, 7, 8]); });

        running.Succeed();
        (await _handler.NextCallAsync()).Succeed();
        (await _handler.NextCallAsync()).Succeed();
        Assert.Equal(["out-1", "out-2", "out-3", "out-4"], (await results.Bounded()).Select(r => r.Output));
        await first.Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_ReservationWithCancelledToken_GivesTheRoomBack()
    {
        var batcher = CreateBatcher(maxBatchSize: 2, maxQueueSize: 2);
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var reservation = batcher.Reserve(2);

        var results = batcher.EnqueueAsync(reservation, [1, 2], cancellationToken: cancelled.Token);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => results).Bounded();
        Assert.Equal(0, batcher.ReservedItems);
        using var again = batcher.Reserve(2);
        Assert.Throws<ArgumentException>(() => { _ = batcher.EnqueueAsync(again, [1]); });
    }

    [Fact]
    public async Task DrainAsync_WaitsForOpenReservations_WhichAreStillAdmitted()
    {
        var batcher = CreateBatcher(maxBatchSize: 4);
        var reservation = batcher.Reserve(2);

        var drain = batcher.DrainAsync();
        Assert.False(drain.IsCompleted);
        Assert.Equal(RejectionReason.ShuttingDown, Assert.Throws<BatchRejectedException>(() => batcher.Reserve(1)).Reason);

        var results = batcher.EnqueueAsync(reservation, [1, 2]);
        var call = await _handler.NextCallAsync();
        Assert.False(drain.IsCompleted);
        call.Succeed();

        Assert.Equal(2, (await results.Bounded()).Length);
        await drain.Bounded();
    }

    [Fact]
    public async Task DrainAsync_ReleasedReservation_CompletesTheDrain()
    {
        var batcher = CreateBatcher(maxBatchSize: 4);
        var reservation = batcher.Reserve(2);
        var drain = batcher.DrainAsync();

        reservation.Dispose();

        await drain.Bounded();
    }

    [Fact]
    public async Task DisposeAsync_OpenReservation_DoesNotWaitAndItsEnqueueIsRefused()
    {
        var batcher = CreateBatcher(maxBatchSize: 4);
        var reservation = batcher.Reserve(2);

        await batcher.DisposeAsync().AsTask().Bounded();
        var results = batcher.EnqueueAsync(reservation, [1, 2]);

        Assert.Equal(RejectionReason.ShuttingDown, (await Assert.ThrowsAsync<BatchRejectedException>(() => results).Bounded()).Reason);
        Assert.Equal(0, batcher.ReservedItems);
    }
}
