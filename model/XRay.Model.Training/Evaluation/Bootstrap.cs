namespace XRay.Model.Evaluation;

/// <summary>A point estimate with a two-sided percentile bootstrap confidence interval.</summary>
public readonly record struct Estimate(double Value, double Lower, double Upper)
{
    public override string ToString() =>
        double.IsNaN(Value) ? "n/a" : $"{Value:F3} [{Lower:F3}, {Upper:F3}]";
}

/// <summary>
/// Percentile bootstrap over images (Efron and Tibshirani, 1993): resample the evaluated images with replacement,
/// recompute the statistic, take the 2.5 and 97.5 percentiles. Resamples in which the statistic is undefined (NaN,
/// e.g. AUROC of a resample without positives) are left out. Seeded, so a report is reproducible.
/// </summary>
public static class Bootstrap
{
    public const int DefaultResamples = 2000;

    /// <summary>
    /// <paramref name="statistic"/> receives the indices of one resample (length <paramref name="count"/>) and returns
    /// one value per output (e.g. one AUROC per class); returns one estimate per output.
    /// </summary>
    public static Estimate[] Percentile(
        int count,
        Func<int[], double[]> statistic,
        int resamples = DefaultResamples,
        double confidence = 0.95,
        int seed = 12345)
    {
        ArgumentNullException.ThrowIfNull(statistic);
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(resamples, 1);
        if (confidence is <= 0 or >= 1)
        {
            throw new ArgumentOutOfRangeException(nameof(confidence), confidence, "Confidence must be in (0, 1).");
        }

        var identity = Enumerable.Range(0, count).ToArray();
        var point = statistic(identity);
        var samples = point.Select(_ => new List<double>(resamples)).ToArray();
        var random = new Random(seed);
        var indices = new int[count];
        for (var r = 0; r < resamples; r++)
        {
            for (var i = 0; i < count; i++)
            {
                indices[i] = random.Next(count);
            }

            var values = statistic(indices);
            for (var k = 0; k < point.Length; k++)
            {
                if (!double.IsNaN(values[k]))
                {
                    samples[k].Add(values[k]);
                }
            }
        }

        var alpha = (1 - confidence) / 2;
        return point.Select((value, k) =>
        {
            if (double.IsNaN(value) || samples[k].Count == 0)
            {
                return new Estimate(value, double.NaN, double.NaN);
            }

            samples[k].Sort();
            return new Estimate(value, Quantile(samples[k], alpha), Quantile(samples[k], 1 - alpha));
        }).ToArray();
    }

    /// <summary>Linear interpolation between order statistics (numpy's default, type 7).</summary>
    internal static double Quantile(IReadOnlyList<double> sorted, double q)
    {
        var position = q * (sorted.Count - 1);
        var low = (int)Math.Floor(position);
        var high = Math.Min(low + 1, sorted.Count - 1);
        return sorted[low] + (sorted[high] - sorted[low]) * (position - low);
    }
}
