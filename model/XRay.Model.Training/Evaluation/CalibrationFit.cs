namespace XRay.Model.Evaluation;

/// <summary>One bin of a reliability diagram: images whose predicted probability fell in [Lower, Upper).</summary>
public sealed record ReliabilityBin(double Lower, double Upper, int Count, double MeanPredicted, double ObservedRate);

/// <summary>
/// Fits and measures probability calibration on (logit, label) pairs: Platt scaling by maximum likelihood, and the
/// usual measures of how far probabilities are from observed frequencies (expected calibration error, Brier score,
/// reliability bins). Labels are read as <see cref="ClassificationMetrics"/> reads them: positive when at least 0.5,
/// NaN ignored.
/// </summary>
public static class CalibrationFit
{
    /// <summary>
    /// Platt scaling: the <c>(scale, offset)</c> maximising the likelihood of the labels under
    /// <c>sigmoid(scale * logit + offset)</c> (Newton's method on the two parameters, with a small ridge
    /// <paramref name="ridge"/> on the scale for stability). <paramref name="plattTargets"/> uses Platt's (1999) smoothed
    /// targets <c>(P + 1) / (P + 2)</c> and <c>1 / (N + 2)</c> instead of 1 and 0, which keeps a separable class from
    /// diverging. A negative fitted scale (the logits rank the class backwards) is clamped to 0: the class then gets one
    /// probability, its smoothed prevalence. Without a positive or a negative: the identity.
    /// </summary>
    public static PlattScaling Platt(ReadOnlySpan<float> logits, ReadOnlySpan<float> labels, bool plattTargets = true, double ridge = 1e-6)
    {
        var (x, y) = Counted(logits, labels);
        var positives = y.Count(v => v);
        var negatives = y.Length - positives;
        if (positives == 0 || negatives == 0)
        {
            return PlattScaling.Identity;
        }

        var hi = plattTargets ? (positives + 1.0) / (positives + 2.0) : 1.0;
        var lo = plattTargets ? 1.0 / (negatives + 2.0) : 0.0;
        var t = y.Select(v => v ? hi : lo).ToArray();
        double a = 1, b = Math.Log((positives + 1.0) / (negatives + 1.0)) - MeanOf(x);
        var previous = NegativeLogLikelihood(x, t, a, b) + ridge * a * a;
        for (var iteration = 0; iteration < 100; iteration++)
        {
            // Gradient and Hessian of the mean negative log-likelihood (plus ridge * a^2) in (a, b).
            double ga = 2 * ridge * a, gb = 0, haa = 2 * ridge, hab = 0, hbb = 0;
            for (var i = 0; i < x.Length; i++)
            {
                var p = Sigmoid(a * x[i] + b);
                var d = (p - t[i]) / x.Length;
                var w = Math.Max(p * (1 - p), 1e-12) / x.Length;
                ga += d * x[i];
                gb += d;
                haa += w * x[i] * x[i];
                hab += w * x[i];
                hbb += w;
            }

            var det = haa * hbb - hab * hab;
            if (!(Math.Abs(det) > 1e-18))
            {
                break;
            }

            var da = (hbb * ga - hab * gb) / det;
            var db = (haa * gb - hab * ga) / det;
            // Backtracking: Newton's step, halved until the loss does not grow.
            var step = 1.0;
            double next;
            while (true)
            {
                next = NegativeLogLikelihood(x, t, a - step * da, b - step * db) + ridge * (a - step * da) * (a - step * da);
                if (next <= previous + 1e-15 || step < 1e-6)
                {
                    break;
                }

                step /= 2;
            }

            a -= step * da;
            b -= step * db;
            var converged = previous - next < 1e-12;
            previous = next;
            if (converged)
            {
                break;
            }
        }

        if (a < 0)
        {
            // Backwards ranking: refuse to invert the class; predict its smoothed prevalence for every image.
            return new PlattScaling(0f, (float)Math.Log(t.Average() / (1 - t.Average())));
        }

        return new PlattScaling((float)a, (float)b);
    }

    /// <summary>
    /// Expected calibration error with <paramref name="bins"/> equal-width bins over [0, 1]: the image-weighted mean of
    /// |observed rate - mean predicted probability| per bin. NaN without counted labels.
    /// </summary>
    public static double ExpectedCalibrationError(ReadOnlySpan<float> probabilities, ReadOnlySpan<float> labels, int bins = 10)
    {
        var reliability = Reliability(probabilities, labels, bins);
        var total = reliability.Sum(r => r.Count);
        return total == 0 ? double.NaN : reliability.Where(r => r.Count > 0).Sum(r => r.Count * Math.Abs(r.ObservedRate - r.MeanPredicted)) / total;
    }

    /// <summary>Mean squared difference between probability and label (0 or 1). NaN without counted labels.</summary>
    public static double Brier(ReadOnlySpan<float> probabilities, ReadOnlySpan<float> labels)
    {
        var (p, y) = Counted(probabilities, labels);
        return p.Length == 0 ? double.NaN : p.Select((v, i) => Math.Pow(v - (y[i] ? 1 : 0), 2)).Average();
    }

    /// <summary>Equal-width bins over [0, 1] (the last one closed); empty bins have Count 0 and NaN means.</summary>
    public static IReadOnlyList<ReliabilityBin> Reliability(ReadOnlySpan<float> probabilities, ReadOnlySpan<float> labels, int bins = 10)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bins, 1);
        var (p, y) = Counted(probabilities, labels);
        var count = new int[bins];
        var predicted = new double[bins];
        var observed = new double[bins];
        for (var i = 0; i < p.Length; i++)
        {
            var k = Math.Clamp((int)(p[i] * bins), 0, bins - 1);
            count[k]++;
            predicted[k] += p[i];
            observed[k] += y[i] ? 1 : 0;
        }

        return Enumerable.Range(0, bins).Select(k => new ReliabilityBin(
            (double)k / bins, (double)(k + 1) / bins, count[k],
            count[k] == 0 ? double.NaN : predicted[k] / count[k],
            count[k] == 0 ? double.NaN : observed[k] / count[k])).ToArray();
    }

    /// <summary>
    /// Isotonic regression (pool adjacent violators) of the labels on the scores: the non-decreasing step function
    /// closest in squared error, as (score, probability) knots sorted by score. For comparing with Platt scaling.
    /// </summary>
    public static (float[] Scores, float[] Probabilities) Isotonic(ReadOnlySpan<float> scores, ReadOnlySpan<float> labels)
    {
        var (s, y) = Counted(scores, labels);
        var order = Enumerable.Range(0, s.Length).OrderBy(i => s[i]).ToArray();
        var values = new List<double>();
        var weights = new List<int>();
        var ends = new List<float>();
        foreach (var i in order)
        {
            values.Add(y[i] ? 1 : 0);
            weights.Add(1);
            ends.Add((float)s[i]);
            while (values.Count > 1 && values[^2] >= values[^1])
            {
                var w = weights[^2] + weights[^1];
                var v = (values[^2] * weights[^2] + values[^1] * weights[^1]) / w;
                values.RemoveAt(values.Count - 1);
                weights.RemoveAt(weights.Count - 1);
                var end = ends[^1];
                ends.RemoveAt(ends.Count - 1);
                values[^1] = v;
                weights[^1] = w;
                ends[^1] = end;
            }
        }

        return (ends.ToArray(), values.Select(v => (float)v).ToArray());
    }

    /// <summary>The isotonic step function at <paramref name="score"/>: the value of the first block whose upper end is at or above it.</summary>
    public static float IsotonicAt((float[] Scores, float[] Probabilities) fit, float score)
    {
        var index = Array.BinarySearch(fit.Scores, score);
        if (index < 0)
        {
            index = ~index;
        }

        return fit.Probabilities[Math.Min(index, fit.Probabilities.Length - 1)];
    }

    private static double NegativeLogLikelihood(double[] x, double[] t, double a, double b)
    {
        double sum = 0;
        for (var i = 0; i < x.Length; i++)
        {
            var z = a * x[i] + b;
            // log(1 + e^z) - t z, stable for large |z|.
            sum += (z > 0 ? z + Math.Log(1 + Math.Exp(-z)) : Math.Log(1 + Math.Exp(z))) - t[i] * z;
        }

        return sum / x.Length;
    }

    private static double Sigmoid(double z) => z >= 0 ? 1 / (1 + Math.Exp(-z)) : Math.Exp(z) / (1 + Math.Exp(z));

    private static double MeanOf(double[] x) => x.Length == 0 ? 0 : x.Average();

    private static (double[] X, bool[] Positive) Counted(ReadOnlySpan<float> values, ReadOnlySpan<float> labels)
    {
        if (values.Length != labels.Length)
        {
            throw new ArgumentException($"{values.Length} values but {labels.Length} labels.", nameof(labels));
        }

        var x = new List<double>(values.Length);
        var y = new List<bool>(values.Length);
        for (var i = 0; i < values.Length; i++)
        {
            if (float.IsNaN(labels[i]))
            {
                continue;
            }

            if (!float.IsFinite(values[i]))
            {
                throw new ArgumentException($"Value {i} is {values[i]}.", nameof(values));
            }

            x.Add(values[i]);
            y.Add(labels[i] >= 0.5f);
        }

        return (x.ToArray(), y.ToArray());
    }
}
