using Microsoft.Extensions.Time.Testing;

namespace XRay.Batching.Tests;

public class DynamicBatcherTests : BatcherTestBase
{
    private static readonly TimeSpan OneMicrosecond = TimeSpan.FromMicroseconds(1);

    private DynamicBatcher<int, string> CreateBatcher(int maxBatchSize = 8, long maxQueueDelayMicroseconds = 0,
                                                      int maxQueueSize = 64, int modelInstances = 1)
    {
        _batcher = new DynamicBatcher<int, string>(_handler, new BatchingOptions
        {
            MaxBatchSize = maxBatchSize,
            MaxQueueDelayMicroseconds = maxQueueDelayMicroseconds,
            MaxQueueSize = maxQueueSize,
            ModelInstances = modelInstances,
        }, _clock, _observer);
        return _batcher;
    }

    private static async Task<BatchRejectedException> AssertRejectedAsync(Task task, RejectionReason reason)
    {
        var error = await Assert.ThrowsAsync<BatchRejectedException>(() => task).Bounded();
        Assert.Equal(reason, error.Reason);
        return error;
    }

    [Fact]
    public async Task EnqueueAsync_IdleModel_DispatchesLoneRequestAtOnce()
    {
        var batcher = CreateBatcher(maxBatchSize: 8);

        var request = batcher.EnqueueAsync([7]);
        var call = await _handler.NextCallAsync();
        call.Succeed();
        var results = await request.Bounded();

        Assert.Equal([7], call.Inputs);
        var result = Assert.Single(results);
        Assert.Equal(new ItemResult<string>("out-7", TimeSpan.Zero, TimeSpan.Zero, 1), result);
        Assert.Equal(["started 1", "completed 1 in 0ms"], _observer.Events);
    }

    [Fact]
    public async Task EnqueueAsync_WhileBatchRuns_QueuedRequestsFormOneNextBatch()
    {
        var batcher = CreateBatcher(maxBatchSize: 8);
        var first = batcher.EnqueueAsync([1]);
        var running = await _handler.NextCallAsync();

        var second = batcher.EnqueueAsync([2]);
        var third = batcher.EnqueueAsync([3, 4]);
        var fourth = batcher.EnqueueAsync([5]);
        Assert.Equal(4, batcher.QueuedItems);
        running.Succeed();
        var next = await _handler.NextCallAsync();
        next.Succeed();

        Assert.Equal([2, 3, 4, 5], next.Inputs);
        Assert.Equal(["out-3", "out-4"], (await third.Bounded()).Select(r => r.Output));
        Assert.All(await Task.WhenAll(second, third, fourth).Bounded(), rows => Assert.All(rows, r => Assert.Equal(4, r.BatchSize)));
        await first.Bounded();
        Assert.Equal(2, _handler.CallCount);
    }

    [Fact]
    public async Task EnqueueAsync_FullBatch_DispatchesWithoutWaitingForMaxQueueDelay()
    {
        var batcher = CreateBatcher(maxBatchSize: 4, maxQueueDelayMicroseconds: 10_000_000);

        var first = batcher.EnqueueAsync([1, 2]);
        var second = batcher.EnqueueAsync([3, 4]);
        var call = await _handler.NextCallAsync();
        call.Succeed();
        await Task.WhenAll(first, second).Bounded();

        Assert.Equal([1, 2, 3, 4], call.Inputs);
        Assert.Equal(_clock.Start, _clock.GetUtcNow());
    }

    [Fact]
    public async Task EnqueueAsync_PartialBatch_DispatchesAfterMaxQueueDelay()
    {
        var delay = TimeSpan.FromMilliseconds(10);
        var batcher = CreateBatcher(maxBatchSize: 8, maxQueueDelayMicroseconds: 10_000);

        var first = batcher.EnqueueAsync([1]);
        _clock.Advance(delay - OneMicrosecond);
        var second = batcher.EnqueueAsync([2]);
        // The loop cannot dispatch before the due time: the decision reads the clock, which has not reached it.
        Assert.Equal(0, _handler.CallCount);
        _clock.Advance(OneMicrosecond);
        var call = await _handler.NextCallAsync();
        call.Succeed();

        Assert.Equal([1, 2], call.Inputs);
        var firstResult = Assert.Single(await first.Bounded());
        var secondResult = Assert.Single(await second.Bounded());
        Assert.Equal(delay, firstResult.QueueTime);
        Assert.Equal(OneMicrosecond, secondResult.QueueTime);
        Assert.Equal(2, firstResult.BatchSize);
    }

    [Fact]
    public async Task EnqueueAsync_QueueFull_RejectsAtOnceWithCounts()
    {
        var batcher = CreateBatcher(maxBatchSize: 2, maxQueueSize: 4);
        var running = batcher.EnqueueAsync([0]);
        var call = await _handler.NextCallAsync();
        var queued = batcher.EnqueueAsync([1, 2, 3]);

        var tooMany = batcher.EnqueueAsync([4, 5]);
        var largerThanQueue = batcher.EnqueueAsync([6, 7, 8, 9, 10]);

        Assert.True(tooMany.IsFaulted);
        Assert.True(largerThanQueue.IsFaulted);
        var error = await AssertRejectedAsync(tooMany, RejectionReason.QueueFull);
        Assert.Equal("queue full: 3 of 4 images waiting, request has 2", error.Message);
        error = await AssertRejectedAsync(largerThanQueue, RejectionReason.QueueFull);
        Assert.Equal("queue full: request has 5 images, more than the queue holds (4)", error.Message);
        Assert.Equal(3, batcher.QueuedItems);
        Assert.Contains("rejected QueueFull 2", _observer.Events);
        Assert.Contains("rejected QueueFull 5", _observer.Events);

        call.Succeed();
        (await _handler.NextCallAsync()).Succeed();
        (await _handler.NextCallAsync()).Succeed();
        await Task.WhenAll(running, queued).Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_LargerThanMaxBatchSize_SplitsAndAnswersRowsInOrder()
    {
        var batcher = CreateBatcher(maxBatchSize: 4);

        var request = batcher.EnqueueAsync(Enumerable.Range(0, 10).ToArray());
        var calls = new List<BatchCall>();
        for (var i = 0; i < 3; i++)
        {
            calls.Add(await _handler.NextCallAsync());
            calls[^1].Succeed();
        }

        var results = await request.Bounded();

        Assert.Equal([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], calls.Select(c => c.Inputs));
        Assert.Equal(Enumerable.Range(0, 10).Select(BatchCall.OutputFor), results.Select(r => r.Output));
        Assert.Equal([4, 4, 4, 4, 4, 4, 4, 4, 2, 2], results.Select(r => r.BatchSize));
    }

    [Fact]
    public async Task EnqueueAsync_RequestSplitAcrossSharedBatches_AnsweredWhenAllItsItemsAreDone()
    {
        var batcher = CreateBatcher(maxBatchSize: 4);
        var first = batcher.EnqueueAsync([0]);
        var running = await _handler.NextCallAsync();
        var second = batcher.EnqueueAsync([1, 2, 3]);
        var third = batcher.EnqueueAsync([4, 5, 6]);

        running.Succeed();
        var shared = await _handler.NextCallAsync();
        shared.Succeed();
        await second.Bounded();
        Assert.False(third.IsCompleted);
        var rest = await _handler.NextCallAsync();
        rest.Succeed();

        Assert.Equal([1, 2, 3, 4], shared.Inputs);
        Assert.Equal([5, 6], rest.Inputs);
        var results = await third.Bounded();
        Assert.Equal(["out-4", "out-5", "out-6"], results.Select(r => r.Output));
        Assert.Equal([4, 2, 2], results.Select(r => r.BatchSize));
        await first.Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_DeadlinePassesWhileQueued_RejectsPromptlyAndNeverComputes()
    {
        var batcher = CreateBatcher();
        var first = batcher.EnqueueAsync([1]);
        var running = await _handler.NextCallAsync();
        var expiring = batcher.EnqueueAsync([2, 3], deadline: _clock.GetUtcNow() + TimeSpan.FromMilliseconds(100));
        var patient = batcher.EnqueueAsync([4]);

        _clock.Advance(TimeSpan.FromMilliseconds(100));

        var error = await AssertRejectedAsync(expiring, RejectionReason.DeadlineExceeded);
        Assert.Equal("deadline exceeded: 2 of 2 images were still queued at the deadline", error.Message);
        Assert.Equal(1, batcher.QueuedItems);
        Assert.Contains("rejected DeadlineExceeded 2", _observer.Events);
        running.Succeed();
        var next = await _handler.NextCallAsync();
        next.Succeed();
        Assert.Equal([4], next.Inputs);
        await Task.WhenAll(first, patient).Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_DeadlineAlreadyPassed_RejectsAtOnce()
    {
        var batcher = CreateBatcher();

        var request = batcher.EnqueueAsync([1], deadline: _clock.GetUtcNow());

        Assert.True(request.IsFaulted);
        await AssertRejectedAsync(request, RejectionReason.DeadlineExceeded);
        Assert.Equal(0, _handler.CallCount);
    }

    [Fact]
    public async Task EnqueueAsync_FarDeadline_IsAcceptedAndRuns()
    {
        var batcher = CreateBatcher();

        var request = batcher.EnqueueAsync([1], deadline: DateTimeOffset.MaxValue);
        (await _handler.NextCallAsync()).Succeed();

        await request.Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_AlreadyCancelledToken_IsCancelledAndNeverComputes()
    {
        var batcher = CreateBatcher();

        var request = batcher.EnqueueAsync([1], cancellationToken: new CancellationToken(canceled: true));

        Assert.True(request.IsCanceled);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => request).Bounded();
        Assert.Equal(0, batcher.QueuedItems);
    }

    [Fact]
    public async Task EnqueueAsync_CancelledWhileQueued_ThrowsAndNeverComputes()
    {
        var batcher = CreateBatcher();
        var first = batcher.EnqueueAsync([1]);
        var running = await _handler.NextCallAsync();
        using var cts = new CancellationTokenSource();
        var cancelled = batcher.EnqueueAsync([2, 3], cancellationToken: cts.Token);
        var kept = batcher.EnqueueAsync([4]);

        cts.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled).Bounded();
        Assert.Equal(1, batcher.QueuedItems);
        Assert.Contains("cancelled 2", _observer.Events);
        running.Succeed();
        var next = await _handler.NextCallAsync();
        next.Succeed();
        Assert.Equal([4], next.Inputs);
        await Task.WhenAll(first, kept).Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_BatchFails_FailsOnlyItsRequestsAndNextBatchSucceeds()
    {
        var batcher = CreateBatcher();
        var failing = batcher.EnqueueAsync([1]);
        var running = await _handler.NextCallAsync();
        var next = batcher.EnqueueAsync([2]);
        var boom = new InvalidOperationException("boom");

        running.Fail(boom);

        var error = await Assert.ThrowsAsync<BatchExecutionException>(() => failing).Bounded();
        Assert.Same(boom, error.InnerException);
        var nextCall = await _handler.NextCallAsync();
        nextCall.Succeed();
        Assert.Equal("out-2", Assert.Single(await next.Bounded()).Output);
        Assert.Contains("completed 1 in 0ms failed: boom", _observer.Events);
    }

    [Fact]
    public async Task EnqueueAsync_BatchFails_RemovesFailedRequestsQueuedItems()
    {
        var batcher = CreateBatcher(maxBatchSize: 2);
        var split = batcher.EnqueueAsync([1, 2, 3]);
        var running = await _handler.NextCallAsync();
        var other = batcher.EnqueueAsync([4]);
        Assert.Equal(2, batcher.QueuedItems);

        running.Fail(new InvalidOperationException("boom"));

        await Assert.ThrowsAsync<BatchExecutionException>(() => split).Bounded();
        var next = await _handler.NextCallAsync();
        next.Succeed();
        Assert.Equal([4], next.Inputs);
        await other.Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_HandlerReturnsWrongCount_FailsBatchAndKeepsServing()
    {
        var batcher = CreateBatcher();
        var request = batcher.EnqueueAsync([1, 2]);
        var call = await _handler.NextCallAsync();

        call.Return(["only one"]);

        var error = await Assert.ThrowsAsync<BatchExecutionException>(() => request).Bounded();
        Assert.IsType<InvalidOperationException>(error.InnerException);
        Assert.Contains("1 outputs for 2 inputs", error.InnerException.Message);
        var next = batcher.EnqueueAsync([3]);
        (await _handler.NextCallAsync()).Succeed();
        await next.Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_EmptyItems_ThrowsArgumentException()
    {
        var batcher = CreateBatcher();

        await Assert.ThrowsAsync<ArgumentException>(() => batcher.EnqueueAsync([])).Bounded();
    }

    [Fact]
    public async Task EnqueueAsync_PerItemTimings_MatchTheClock()
    {
        var batcher = CreateBatcher();
        var first = batcher.EnqueueAsync([1]);
        var firstCall = await _handler.NextCallAsync();
        _clock.Advance(TimeSpan.FromMilliseconds(5));
        var second = batcher.EnqueueAsync([2, 3]);
        _clock.Advance(TimeSpan.FromMilliseconds(10));

        firstCall.Succeed();
        var firstResult = Assert.Single(await first.Bounded());
        var secondCall = await _handler.NextCallAsync();
        _clock.Advance(TimeSpan.FromMilliseconds(7));
        secondCall.Succeed();
        var secondResults = await second.Bounded();

        Assert.Equal(new ItemResult<string>("out-1", TimeSpan.Zero, TimeSpan.FromMilliseconds(15), 1), firstResult);
        Assert.All(secondResults, r =>
        {
            Assert.Equal(TimeSpan.FromMilliseconds(10), r.QueueTime);
            Assert.Equal(TimeSpan.FromMilliseconds(7), r.ComputeTime);
            Assert.Equal(2, r.BatchSize);
        });
    }

    [Fact]
    public async Task DrainAsync_RejectsNewRequestsAndCompletesAfterQueuedWorkRan()
    {
        var batcher = CreateBatcher();
        var first = batcher.EnqueueAsync([1]);
        var running = await _handler.NextCallAsync();
        var queued = batcher.EnqueueAsync([2]);

        var drain = batcher.DrainAsync();

        Assert.False(drain.IsCompleted);
        await AssertRejectedAsync(batcher.EnqueueAsync([3]), RejectionReason.ShuttingDown);
        running.Succeed();
        var last = await _handler.NextCallAsync();
        Assert.False(drain.IsCompleted);
        last.Succeed();
        await drain.Bounded();
        Assert.Equal([2], last.Inputs);
        await Task.WhenAll(first, queued).Bounded();
    }

    [Fact]
    public async Task DrainAsync_WithMaxQueueDelay_DispatchesPartialBatchWithoutWaiting()
    {
        var batcher = CreateBatcher(maxQueueDelayMicroseconds: 10_000_000);
        var request = batcher.EnqueueAsync([1]);

        var drain = batcher.DrainAsync();
        (await _handler.NextCallAsync()).Succeed();

        await drain.Bounded();
        await request.Bounded();
        Assert.Equal(_clock.Start, _clock.GetUtcNow());
    }

    [Fact]
    public async Task DrainAsync_Cancelled_FailsQueuedWithShuttingDown()
    {
        var batcher = CreateBatcher();
        var first = batcher.EnqueueAsync([1]);
        var running = await _handler.NextCallAsync();
        var queued = batcher.EnqueueAsync([2]);
        using var cts = new CancellationTokenSource();

        var drain = batcher.DrainAsync(cts.Token);
        cts.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => drain).Bounded();
        await AssertRejectedAsync(queued, RejectionReason.ShuttingDown);
        running.Succeed();
        await first.Bounded();
        Assert.Equal(1, _handler.CallCount);
    }

    [Fact]
    public async Task DisposeAsync_FailsQueuedRequestsAndWaitsForRunningBatch()
    {
        var batcher = CreateBatcher();
        var first = batcher.EnqueueAsync([1]);
        var running = await _handler.NextCallAsync();
        var queued = batcher.EnqueueAsync([2]);

        var dispose = batcher.DisposeAsync().AsTask();

        await AssertRejectedAsync(queued, RejectionReason.ShuttingDown);
        Assert.False(dispose.IsCompleted);
        running.Succeed();
        await dispose.Bounded();
        await first.Bounded();
        await AssertRejectedAsync(batcher.EnqueueAsync([3]), RejectionReason.ShuttingDown);
        Assert.Equal(1, _handler.CallCount);
    }

    [Fact]
    public async Task EnqueueAsync_TwoModelInstances_RunsTwoBatchesConcurrently()
    {
        var batcher = CreateBatcher(modelInstances: 2);
        var first = batcher.EnqueueAsync([1]);
        var firstCall = await _handler.NextCallAsync();

        var second = batcher.EnqueueAsync([2]);
        var secondCall = await _handler.NextCallAsync();
        Assert.Equal(2, batcher.RunningBatches);
        var third = batcher.EnqueueAsync([3]);
        Assert.Equal(1, batcher.QueuedItems);
        secondCall.Succeed();
        var thirdCall = await _handler.NextCallAsync();
        thirdCall.Succeed();
        firstCall.Succeed();

        Assert.Equal([2], secondCall.Inputs);
        Assert.Equal([3], thirdCall.Inputs);
        await Task.WhenAll(first, second, third).Bounded();
    }
}
