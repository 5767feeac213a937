using XRay.LoadTest.Bench;
using XRay.LoadTest.Load;
using XRay.LoadTest.Statistics;

namespace XRay.LoadTest.Tests;

public sealed class StatisticsTests
{
    [Fact]
    public void LatencyRecorder_OneToTenThousandMicroseconds_PercentilesAreNearestRankWithinOnePerMille()
    {
        var recorder = new LatencyRecorder();
        // Recorded out of order: percentiles must not depend on arrival order.
        foreach (int value in Enumerable.Range(1, 10_000).OrderBy(v => (v * 7919) % 10_007))
        {
            recorder.Record(value);
        }

        LatencySummary summary = recorder.Summarize();

        Assert.Equal(10_000, summary.Count);
        Assert.Equal(0.001, summary.Min);
        Assert.Equal(10.0, summary.Max);
        Assert.Equal(5.0, summary.Mean, 2);
        // Nearest rank: p of n values is the ceil(p/100 * n)-th smallest.
        AssertWithin(5.000, summary.P50);
        AssertWithin(9.000, summary.P90);
        AssertWithin(9.500, summary.P95);
        AssertWithin(9.900, summary.P99);
        AssertWithin(9.990, summary.P999);
    }

    [Fact]
    public void LatencyRecorder_RareSlowRequests_ShowInTheTailNotTheMedian()
    {
        var recorder = new LatencyRecorder();
        for (int i = 0; i < 990; i++) recorder.Record(1_000);     // 1 ms
        for (int i = 0; i < 10; i++) recorder.Record(250_000);    // 250 ms

        LatencySummary summary = recorder.Summarize();

        AssertWithin(1.0, summary.P50);
        AssertWithin(1.0, summary.P99);
        AssertWithin(250.0, summary.P999);
        Assert.Equal(250.0, summary.Max);
        Assert.Equal((990 * 1.0 + 10 * 250.0) / 1000, summary.Mean, 3);
    }

    [Fact]
    public void LatencyRecorder_PercentilesNeverExceedTheExactMax()
    {
        var recorder = new LatencyRecorder();
        recorder.Record(844_680); // a bucket's upper edge lies above this value

        LatencySummary summary = recorder.Summarize();

        Assert.Equal(844.68, summary.Max);
        Assert.Equal(844.68, summary.P999);
        Assert.Equal(844.68, summary.P50);
    }

    [Fact]
    public void LatencyRecorder_Empty_SummarizesToZeroCount()
    {
        Assert.Equal(0, new LatencyRecorder().Summarize().Count);
        Assert.Equal(0, new LatencyRecorder().Summarize().P99);
    }

    [Fact]
    public async Task LatencyRecorder_ManyThreads_CountsEveryValue()
    {
        var recorder = new LatencyRecorder();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(t => Task.Run(() =>
        {
            for (int i = 1; i <= 5_000; i++) recorder.Record(i);
        }))).WaitAsync(TimeSpan.FromSeconds(30));

        LatencySummary summary = recorder.Summarize();

        Assert.Equal(40_000, summary.Count);
        Assert.Equal(0.001, summary.Min);
        Assert.Equal(5.0, summary.Max);
        AssertWithin(2.5, summary.P50);
    }

    [Fact]
    public void PoissonArrivals_Seeded_MeanRateWithinTwoPercentAndGapsExponential()
    {
        const double rate = 200;
        ArrivalProcess arrivals = ArrivalProcess.Create(ArrivalKind.Poisson, rate, seed: 42);
        double[] gaps = Enumerable.Range(0, 50_000).Select(_ => arrivals.NextGapSeconds()).ToArray();

        double mean = gaps.Average();
        double sd = Math.Sqrt(gaps.Select(g => (g - mean) * (g - mean)).Average());
        // Arrivals per one-second window: Poisson, so variance about equal to the mean (dispersion index 1).
        double time = 0;
        int[] perSecond = new int[(int)(gaps.Sum() + 1)];
        foreach (double gap in gaps)
        {
            time += gap;
            perSecond[(int)time]++;
        }
        int[] full = perSecond[..^1];
        double windowMean = full.Average();
        double windowVariance = full.Select(c => (c - windowMean) * (c - windowMean)).Average();

        Assert.InRange(1 / mean, rate * 0.98, rate * 1.02);
        Assert.InRange(sd / mean, 0.95, 1.05);            // exponential: coefficient of variation 1
        Assert.InRange(windowVariance / windowMean, 0.75, 1.25);
        Assert.All(gaps, gap => Assert.True(gap > 0 && double.IsFinite(gap)));
    }

    [Fact]
    public void PoissonArrivals_SameSeed_SameSchedule()
    {
        ArrivalProcess a = ArrivalProcess.Create(ArrivalKind.Poisson, 50, seed: 7);
        ArrivalProcess b = ArrivalProcess.Create(ArrivalKind.Poisson, 50, seed: 7);
        ArrivalProcess c = ArrivalProcess.Create(ArrivalKind.Poisson, 50, seed: 8);

        double[] first = Enumerable.Range(0, 100).Select(_ => a.NextGapSeconds()).ToArray();

        Assert.Equal(first, Enumerable.Range(0, 100).Select(_ => b.NextGapSeconds()));
        Assert.NotEqual(first, Enumerable.Range(0, 100).Select(_ => c.NextGapSeconds()));
    }

    [Fact]
    public void ConstantArrivals_EveryGapIsOneOverRate()
    {
        ArrivalProcess arrivals = ArrivalProcess.Create(ArrivalKind.Constant, 250, seed: 1);

        Assert.All(Enumerable.Range(0, 100), _ => Assert.Equal(0.004, arrivals.NextGapSeconds(), 12));
        Assert.Throws<ArgumentOutOfRangeException>(() => ArrivalProcess.Create(ArrivalKind.Poisson, 0, seed: 1));
    }

    [Fact]
    public void RawThroughput_BetweenMeasuredSizes_InterpolatesForwardTime()
    {
        RawPoint[] raw = [Point(1, 100), Point(4, 200)]; // forwards: 10 ms at 1, 20 ms at 4

        // Batch 2: forward 10 + (20 - 10) / 3 ms = 13.33 ms, so 150 img/s.
        Assert.Equal(150, RawModelBenchmark.ImagesPerSecondAt(raw, 2), 6);
        Assert.Equal(100, RawModelBenchmark.ImagesPerSecondAt(raw, 1));
        Assert.Equal(200, RawModelBenchmark.ImagesPerSecondAt(raw, 32)); // flat beyond the last size
        // Half the images at batch 1 (1/100 s each), half at 4 (1/200 s each): 2 / (0.01 + 0.005) = 133.3 img/s.
        Assert.Equal(133.333, RawModelBenchmark.ImagesPerSecondForMix(raw, new Dictionary<int, long> { [1] = 1, [4] = 1 }), 3);
    }

    [Fact]
    public void BenchRemeasures_TheUnmeasuredBatchSizesCarryingNinetyFivePercentOfImages()
    {
        var served = new Dictionary<string, long> { ["1"] = 5, ["7"] = 700, ["8"] = 200, ["13"] = 90, ["20"] = 5 };

        int[] sizes = BenchRunner.BatchSizesToMeasure(served, new HashSet<int> { 1, 8 });

        // 7 (70%), then 8 (measured already; 90%), then 13 (99%): 95% covered, so 1 and 20 are left out.
        Assert.Equal([7, 13], sizes);
    }

    [Theory]
    [InlineData(Grpc.Core.StatusCode.OK, "OK")]
    [InlineData(Grpc.Core.StatusCode.ResourceExhausted, "RESOURCE_EXHAUSTED")]
    [InlineData(Grpc.Core.StatusCode.DeadlineExceeded, "DEADLINE_EXCEEDED")]
    [InlineData(Grpc.Core.StatusCode.Unavailable, "UNAVAILABLE")]
    public void StatusNames_AreGrpcCanonical(Grpc.Core.StatusCode code, string name) =>
        Assert.Equal(name, RunRecorder.CanonicalName(code));

    private static RawPoint Point(int batch, double imagesPerSecond) => new()
    {
        BatchSize = batch,
        Iterations = 10,
        ImagesPerS = imagesPerSecond,
        ForwardMs = new LatencySummary { Count = 10, P50 = batch / imagesPerSecond * 1000 },
    };

    [Fact]
    public void Timeline_BucketsCompletionsByTime_WithRatesAndExactPercentiles()
    {
        var timeline = new TimelineRecorder();
        const long start = 1_000_000;
        static long At(double seconds) => start + (long)(seconds * System.Diagnostics.Stopwatch.Frequency);
        // [0, 1 s): 100 requests of 2 images, 1..100 ms. [1, 2 s]: 50 of 10 ms, 10 failures, one at the window's very end.
        for (int i = 1; i <= 100; i++) timeline.Record(At(0.005 * i), i * 1000, images: 2);
        for (int i = 0; i < 49; i++) timeline.Record(At(1.1 + 0.01 * i), 10_000, images: 2);
        timeline.Record(At(2.0), 10_000, images: 2);
        for (int i = 0; i < 10; i++) timeline.Record(At(1.5), 0, images: 0);
        // Outside the window: before it (warm-up) and after it.
        timeline.Record(At(-0.1), 5_000, images: 1);
        timeline.Record(At(2.5), 5_000, images: 1);

        IReadOnlyList<TimelinePoint> points = timeline.Build(start, windowSeconds: 2, maxPoints: 2);

        Assert.Equal(2, points.Count);
        Assert.Equal((0, 1, 100, 0, 100, 200), (points[0].StartS, points[0].EndS, points[0].Ok, points[0].Failed, points[0].RequestsPerS, points[0].ImagesPerS));
        Assert.Equal((50.0, 90.0, 99.0), (points[0].P50Ms, points[0].P90Ms, points[0].P99Ms));
        Assert.Equal((1, 2, 50, 10, 50, 100), (points[1].StartS, points[1].EndS, points[1].Ok, points[1].Failed, points[1].RequestsPerS, points[1].ImagesPerS));
        Assert.Equal((10.0, 10.0), (points[1].P50Ms, points[1].P99Ms));
    }

    [Fact]
    public void Timeline_IntervalsHoldEnoughCompletions_ButAtLeastTen()
    {
        var timeline = new TimelineRecorder();
        // 30 s at 4 completions/s: 20 per interval would take 5 s intervals (6 points); at least 10 points wins: 2 s intervals, 15 points.
        for (int i = 0; i < 120; i++) timeline.Record(i * System.Diagnostics.Stopwatch.Frequency / 4, 1000, images: 1);

        IReadOnlyList<TimelinePoint> points = timeline.Build(0, windowSeconds: 30);

        Assert.Equal(15, points.Count);
        Assert.All(points, p => Assert.Equal(2, p.EndS - p.StartS));
        Assert.Equal(120, points.Sum(p => p.Ok));
        Assert.Empty(new TimelineRecorder().Build(0, 10));
    }

    /// <summary>HdrHistogram with 3 significant digits: within 0.1%.</summary>
    private static void AssertWithin(double expected, double actual) =>
        Assert.InRange(actual, expected * 0.999, expected * 1.001);
}
