namespace XRay.Batching;

/// <summary>
/// Batch sizes the model runs well, learned from measured forward times: Triton's <c>preferred_batch_size</c>, but
/// measured instead of configured. Raw throughput is not monotonic in the batch size (a CPU kernel may tile 32 images
/// well and 30 badly: 58 against 46 images/s measured), so a size is preferred only when its throughput is within
/// <see cref="Tolerance"/> of the best throughput of any size up to it. Size 1 is always preferred. Immutable.
/// </summary>
public sealed class PreferredBatchSizes
{
    /// <summary>How much slower per image than a smaller size a size may be and still be preferred: 5%, about the run-to-run noise.</summary>
    public const double Tolerance = 0.05;

    private readonly bool[] _preferred;

    private PreferredBatchSizes(bool[] preferred) => _preferred = preferred;

    /// <summary>The sizes preferred, ascending.</summary>
    public IReadOnlyList<int> Sizes => Enumerable.Range(1, _preferred.Length).Where(size => _preferred[size - 1]).ToArray();

    /// <summary>
    /// Learns from <paramref name="forwardTimes"/>[i], the time of one forward of batch size i + 1 (every size from 1
    /// up; non-positive or non-finite times are treated as unmeasured and not preferred, except size 1).
    /// </summary>
    public static PreferredBatchSizes Learn(IReadOnlyList<TimeSpan> forwardTimes)
    {
        ArgumentNullException.ThrowIfNull(forwardTimes);
        if (forwardTimes.Count == 0)
        {
            throw new ArgumentException("At least the time of batch size 1 is needed.", nameof(forwardTimes));
        }

        var preferred = new bool[forwardTimes.Count];
        preferred[0] = true;
        double best = 0;
        for (int size = 1; size <= forwardTimes.Count; size++)
        {
            double seconds = forwardTimes[size - 1].TotalSeconds;
            if (!(seconds > 0) || double.IsInfinity(seconds))
            {
                continue;
            }

            double throughput = size / seconds;
            if (throughput >= best * (1 - Tolerance))
            {
                preferred[size - 1] = true;
            }

            best = Math.Max(best, throughput);
        }

        return new PreferredBatchSizes(preferred);
    }

    /// <summary>The largest preferred size up to <paramref name="available"/> (at least 1); sizes beyond those measured are taken as they come.</summary>
    public int Choose(int available)
    {
        if (available > _preferred.Length)
        {
            return available;
        }

        for (int size = available; size > 1; size--)
        {
            if (_preferred[size - 1])
            {
                return size;
            }
        }

        return Math.Min(available, 1);
    }
}
