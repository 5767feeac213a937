using Microsoft.Extensions.Time.Testing;

namespace XRay.Batching.Tests;

public class PreferredBatchSizesTests
{
    private static readonly DateTimeOffset Oldest = new(2025, 1, 1, 0, 0, 0, TimeSpan.Zero);

    /// <summary>Forward times of sizes 1..n at a fixed throughput, except the given sizes, which run slower.</summary>
    private static TimeSpan[] Times(int count, double imagesPerSecond, params (int Size, double ImagesPerSecond)[] cliffs)
    {
        var times = Enumerable.Range(1, count).Select(size => TimeSpan.FromSeconds(size / imagesPerSecond)).ToArray();
        foreach (var (size, throughput) in cliffs)
        {
            times[size - 1] = TimeSpan.FromSeconds(size / throughput);
        }

        return times;
    }

    [Fact]
    public void Learn_SizeSlowerPerImageThanASmallerOne_IsNotPreferred()
    {
        // The measured cliff: 58 images/s at most sizes, 46 at 30.
        var preferred = PreferredBatchSizes.Learn(Times(32, 58, (30, 46)));

        Assert.DoesNotContain(30, preferred.Sizes);
        Assert.Equal(31, preferred.Sizes.Count);
        Assert.Equal(29, preferred.Choose(30));
        Assert.Equal(31, preferred.Choose(31));
    }

    [Fact]
    public void Learn_GrowingThroughput_PrefersEverySize()
    {
        var times = Enumerable.Range(1, 16).Select(size => TimeSpan.FromMilliseconds(10 + 5 * size)).ToArray();

        Assert.Equal(Enumerable.Range(1, 16), PreferredBatchSizes.Learn(times).Sizes);
    }

    [Fact]
    public void Learn_WithinTolerance_StaysPreferred()
    {
        var preferred = PreferredBatchSizes.Learn(Times(8, 100, (5, 100 * (1 - PreferredBatchSizes.Tolerance / 2))));

        Assert.Contains(5, preferred.Sizes);
    }

    [Fact]
    public void Choose_OnlySizeOneUsable_ReturnsOne_AndBeyondMeasuredTakesAll()
    {
        var preferred = PreferredBatchSizes.Learn(Times(4, 100, (2, 40), (3, 40), (4, 40)));

        Assert.Equal([1], preferred.Sizes);
        Assert.Equal(1, preferred.Choose(4));
        Assert.Equal(9, preferred.Choose(9));
    }

    [Fact]
    public void Decide_WithPreferredSizes_CutsFullAndPartialBatchesToAPreferredSize()
    {
        var preferred = PreferredBatchSizes.Learn(Times(8, 50, (8, 30), (6, 30)));

        Assert.Equal(BatchDecision.Dispatch(7), BatchDecision.Decide(20, Oldest, Oldest, maxBatchSize: 8, TimeSpan.Zero, preferred));
        Assert.Equal(BatchDecision.Dispatch(5), BatchDecision.Decide(6, Oldest, Oldest, maxBatchSize: 8, TimeSpan.Zero, preferred));
        Assert.Equal(BatchDecision.Dispatch(3), BatchDecision.Decide(3, Oldest, Oldest, maxBatchSize: 8, TimeSpan.Zero, preferred));
    }

    [Fact]
    public async Task Batcher_WithPreferredSizes_RunsTheCliffSizeAsTwoPreferredBatches()
    {
        var clock = new FakeTimeProvider();
        var handler = new FakeBatchHandler();
        await using var batcher = new DynamicBatcher<int, string>(handler, new BatchingOptions { MaxBatchSize = 8, MaxQueueSize = 64 }, clock);
        batcher.PreferredBatchSizes = PreferredBatchSizes.Learn(Times(8, 50, (6, 30)));

        var first = batcher.EnqueueAsync([0]);
        var running = await handler.NextCallAsync();
        var queued = batcher.EnqueueAsync([1, 2, 3, 4, 5, 6]);
        running.Succeed();

        var second = await handler.NextCallAsync();
        Assert.Equal([1, 2, 3, 4, 5], second.Inputs); // 6 is on the cliff: 5 now, 1 next
        second.Succeed();
        var third = await handler.NextCallAsync();
        Assert.Equal([6], third.Inputs);
        third.Succeed();

        Assert.Equal(6, (await queued.Bounded()).Length);
        await first.Bounded();
    }
}
