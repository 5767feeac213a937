namespace XRay.Model.Evaluation;

/// <summary>One class's results on an evaluation set.</summary>
/// <param name="Counted">Images whose label for this class is not ignored.</param>
/// <param name="Positives">Counted images with label &gt;= 0.5.</param>
/// <param name="Threshold">Decision threshold on the probability used for <paramref name="AtThreshold"/>.</param>
public sealed record ClassEvaluation(
    string ClassName,
    int Counted,
    int Positives,
    Estimate Auroc,
    Estimate AveragePrecision,
    float Threshold,
    ConfusionCounts AtThreshold,
    IReadOnlyList<(double Fpr, double Tpr)> RocCurve)
{
    /// <summary>Share of counted images at or above the threshold: set it beside <see cref="Prevalence"/> to see an absurd operating point.</summary>
    public double PositiveRate => Counted == 0 ? double.NaN : (double)(AtThreshold.TruePositives + AtThreshold.FalsePositives) / Counted;

    /// <summary>Share of counted images with the finding.</summary>
    public double Prevalence => Counted == 0 ? double.NaN : (double)Positives / Counted;
}

/// <summary>Per-class and mean results, with percentile-bootstrap 95% confidence intervals over images.</summary>
public sealed record EvaluationResult(IReadOnlyList<ClassEvaluation> Classes, Estimate MeanAuroc, int Images, int Resamples);

/// <summary>Computes <see cref="EvaluationResult"/> from probabilities and labels (row-major <c>N x C</c>; NaN labels ignored).</summary>
public static class Evaluator
{
    public static EvaluationResult Evaluate(
        float[] probabilities,
        float[] labels,
        IReadOnlyList<string> classNames,
        IReadOnlyList<float> thresholds,
        int resamples = Bootstrap.DefaultResamples,
        int seed = 12345)
    {
        ArgumentNullException.ThrowIfNull(probabilities);
        ArgumentNullException.ThrowIfNull(labels);
        ArgumentNullException.ThrowIfNull(classNames);
        ArgumentNullException.ThrowIfNull(thresholds);
        var c = classNames.Count;
        if (probabilities.Length != labels.Length || probabilities.Length % c != 0 || thresholds.Count != c)
        {
            throw new ArgumentException(
                $"{probabilities.Length} probabilities, {labels.Length} labels, {c} classes and {thresholds.Count} thresholds do not fit together.");
        }

        var n = probabilities.Length / c;
        var scores = Enumerable.Range(0, c).Select(k => Column(probabilities, n, c, k)).ToArray();
        var truth = Enumerable.Range(0, c).Select(k => Column(labels, n, c, k)).ToArray();

        // One bootstrap for all statistics, so the mean's interval comes from the same resamples as the classes'.
        var estimates = Bootstrap.Percentile(n, indices =>
        {
            var values = new double[2 * c + 1];
            var s = new float[indices.Length];
            var y = new float[indices.Length];
            for (var k = 0; k < c; k++)
            {
                for (var i = 0; i < indices.Length; i++)
                {
                    s[i] = scores[k][indices[i]];
                    y[i] = truth[k][indices[i]];
                }

                values[k] = ClassificationMetrics.Auroc(s, y);
                values[c + k] = ClassificationMetrics.AveragePrecision(s, y);
            }

            values[2 * c] = MeanDefined(values.AsSpan(0, c));
            return values;
        }, resamples, seed: seed);

        var classes = Enumerable.Range(0, c).Select(k =>
        {
            var counted = truth[k].Count(v => !float.IsNaN(v));
            var positives = truth[k].Count(v => v >= 0.5f);
            return new ClassEvaluation(
                classNames[k], counted, positives, estimates[k], estimates[c + k], thresholds[k],
                ClassificationMetrics.Confusion(scores[k], truth[k], thresholds[k]),
                RocCurve(scores[k], truth[k]));
        }).ToArray();
        return new EvaluationResult(classes, estimates[2 * c], n, resamples);
    }

    /// <summary>ROC points from (0, 0) to (1, 1), one per distinct score, highest first; empty without both classes.</summary>
    public static IReadOnlyList<(double Fpr, double Tpr)> RocCurve(float[] scores, float[] labels)
    {
        var pairs = scores.Zip(labels).Where(p => !float.IsNaN(p.Second)).OrderByDescending(p => p.First).ToArray();
        var positives = pairs.Count(p => p.Second >= 0.5f);
        var negatives = pairs.Length - positives;
        if (positives == 0 || negatives == 0)
        {
            return [];
        }

        var points = new List<(double, double)> { (0, 0) };
        int tp = 0, fp = 0;
        for (var i = 0; i < pairs.Length; i++)
        {
            if (pairs[i].Second >= 0.5f) tp++;
            else fp++;
            if (i + 1 == pairs.Length || pairs[i + 1].First != pairs[i].First)
            {
                points.Add(((double)fp / negatives, (double)tp / positives));
            }
        }

        return points;
    }

    /// <summary>
    /// Per-class thresholds calibrated on a validation set (<see cref="ClassificationMetrics.CalibrateThreshold"/>).
    /// </summary>
    public static float[] CalibrateThresholds(float[] probabilities, float[] labels, int numClasses, ThresholdMethod method)
    {
        var n = probabilities.Length / numClasses;
        return Enumerable.Range(0, numClasses)
            .Select(k => ClassificationMetrics.CalibrateThreshold(Column(probabilities, n, numClasses, k), Column(labels, n, numClasses, k), method))
            .ToArray();
    }

    private static double MeanDefined(ReadOnlySpan<double> values)
    {
        double sum = 0;
        var count = 0;
        foreach (var v in values)
        {
            if (!double.IsNaN(v))
            {
                sum += v;
                count++;
            }
        }

        return count == 0 ? double.NaN : sum / count;
    }

    private static float[] Column(float[] rowMajor, int n, int c, int k)
    {
        var column = new float[n];
        for (var i = 0; i < n; i++)
        {
            column[i] = rowMajor[i * c + k];
        }

        return column;
    }
}
