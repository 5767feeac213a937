using XRay.Batching;

namespace XRay.Server.Model;

/// <summary>
/// Times the backend at every batch size from 1 to MaxBatchSize at start-up (<c>Model:Warmup=measure</c>), so that the
/// batcher can avoid the sizes on a throughput cliff (<see cref="PreferredBatchSizes"/>).
/// </summary>
internal static class BatchSizeProfiler
{
    /// <summary>Timed forwards per size; the fastest counts, as the least disturbed by other work.</summary>
    public const int TimedForwards = 2;

    /// <summary>Call after every size has been warmed up once: the first forward of a shape is not representative.</summary>
    public static async Task<PreferredBatchSizes> LearnAsync(IModelBackend backend, int maxBatchSize, TimeProvider clock, CancellationToken cancellationToken)
    {
        int imageLength = backend.Manifest.Preprocessing.OutputLength;
        var input = new float[maxBatchSize * imageLength];
        var logits = new float[maxBatchSize * backend.Manifest.ClassNames.Count];
        var times = new TimeSpan[maxBatchSize];
        for (int size = 1; size <= maxBatchSize; size++)
        {
            times[size - 1] = TimeSpan.MaxValue;
            for (int i = 0; i < TimedForwards; i++)
            {
                long started = clock.GetTimestamp();
                await backend.RunAsync(input, size, logits, cancellationToken).ConfigureAwait(false);
                TimeSpan elapsed = clock.GetElapsedTime(started);
                times[size - 1] = elapsed < times[size - 1] ? elapsed : times[size - 1];
            }
        }

        return PreferredBatchSizes.Learn(times);
    }
}
