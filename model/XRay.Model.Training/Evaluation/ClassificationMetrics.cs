namespace XRay.Model.Evaluation;

/// <summary>How a per-class decision threshold is chosen from validation scores.</summary>
public enum ThresholdMethod
{
    /// <summary>The threshold that maximises F1 (positives are rare: accuracy would favour "never").</summary>
    MaxF1,

    /// <summary>Youden's J: maximises sensitivity + specificity - 1, the ROC point farthest above the diagonal.</summary>
    Youden,
}

/// <summary>
/// Binary metrics for one class: scores (probabilities or logits; only their order matters except for thresholds)
/// against labels. A label counts as positive when it is at least 0.5, so soft labels are read as their nearest
/// hard label; labels that are NaN (ignored, e.g. an uncertain CheXpert label under the ignore policy) are left out.
/// Definitions follow scikit-learn: <c>roc_auc_score</c>, <c>average_precision_score</c>, <c>f1_score</c>.
/// </summary>
public static class ClassificationMetrics
{
    /// <summary>
    /// Area under the ROC curve, as the Mann-Whitney U statistic: the probability that a random positive scores above
    /// a random negative, ties counting one half (average ranks). NaN when there is no positive or no negative.
    /// </summary>
    public static double Auroc(ReadOnlySpan<float> scores, ReadOnlySpan<float> labels)
    {
        var (s, y) = Counted(scores, labels);
        var positives = y.Count(v => v);
        var negatives = y.Length - positives;
        if (positives == 0 || negatives == 0)
        {
            return double.NaN;
        }

        var order = Enumerable.Range(0, s.Length).OrderBy(i => s[i]).ToArray();
        double positiveRankSum = 0;
        for (var start = 0; start < order.Length;)
        {
            var end = start;
            while (end + 1 < order.Length && s[order[end + 1]] == s[order[start]])
            {
                end++;
            }

            // Ranks are 1-based; tied scores share the mean of the ranks they span.
            var rank = (start + end) / 2.0 + 1;
            for (var k = start; k <= end; k++)
            {
                if (y[order[k]])
                {
                    positiveRankSum += rank;
                }
            }

            start = end + 1;
        }

        return (positiveRankSum - positives * (positives + 1) / 2.0) / ((double)positives * negatives);
    }

    /// <summary>
    /// Average precision: sum over distinct score thresholds (descending) of (R_k - R_{k-1}) * P_k, the step-wise area
    /// under the precision-recall curve without interpolation. NaN when there is no positive.
    /// </summary>
    public static double AveragePrecision(ReadOnlySpan<float> scores, ReadOnlySpan<float> labels)
    {
        var (s, y) = Counted(scores, labels);
        var positives = y.Count(v => v);
        if (positives == 0)
        {
            return double.NaN;
        }

        var order = Enumerable.Range(0, s.Length).OrderByDescending(i => s[i]).ToArray();
        double ap = 0, previousRecall = 0;
        int truePositives = 0, predicted = 0;
        for (var start = 0; start < order.Length;)
        {
            var end = start;
            while (end + 1 < order.Length && s[order[end + 1]] == s[order[start]])
            {
                end++;
            }

            for (var k = start; k <= end; k++)
            {
                predicted++;
                if (y[order[k]])
                {
                    truePositives++;
                }
            }

            var recall = (double)truePositives / positives;
            ap += (recall - previousRecall) * truePositives / predicted;
            previousRecall = recall;
            start = end + 1;
        }

        return ap;
    }

    /// <summary>Counts with "positive" meaning score &gt;= threshold.</summary>
    public static ConfusionCounts Confusion(ReadOnlySpan<float> scores, ReadOnlySpan<float> labels, float threshold)
    {
        CheckLengths(scores, labels);
        int tp = 0, fp = 0, tn = 0, fn = 0;
        for (var i = 0; i < scores.Length; i++)
        {
            if (float.IsNaN(labels[i]))
            {
                continue;
            }

            var predicted = scores[i] >= threshold;
            var actual = labels[i] >= 0.5f;
            if (predicted && actual) tp++;
            else if (predicted) fp++;
            else if (actual) fn++;
            else tn++;
        }

        return new ConfusionCounts(tp, fp, tn, fn);
    }

    /// <summary>
    /// The threshold chosen by <paramref name="method"/> among the scores themselves: halfway between the chosen score
    /// and the next lower distinct score, so it does not sit on a validation image. 0.5 when the labels have no
    /// positive or no negative (nothing to calibrate on).
    /// </summary>
    public static float CalibrateThreshold(ReadOnlySpan<float> scores, ReadOnlySpan<float> labels, ThresholdMethod method)
    {
        var (s, y) = Counted(scores, labels);
        var positives = y.Count(v => v);
        var negatives = y.Length - positives;
        if (positives == 0 || negatives == 0)
        {
            return 0.5f;
        }

        var order = Enumerable.Range(0, s.Length).OrderByDescending(i => s[i]).ToArray();
        int tp = 0, fp = 0;
        double bestValue = double.NegativeInfinity;
        var bestIndex = 0;
        for (var start = 0; start < order.Length;)
        {
            var end = start;
            while (end + 1 < order.Length && s[order[end + 1]] == s[order[start]])
            {
                end++;
            }

            for (var k = start; k <= end; k++)
            {
                if (y[order[k]]) tp++;
                else fp++;
            }

            var fn = positives - tp;
            var value = method switch
            {
                ThresholdMethod.MaxF1 => 2.0 * tp / (2.0 * tp + fp + fn),
                ThresholdMethod.Youden => (double)tp / positives - (double)fp / negatives,
                _ => throw new ArgumentOutOfRangeException(nameof(method)),
            };
            if (value > bestValue)
            {
                bestValue = value;
                bestIndex = end;
            }

            start = end + 1;
        }

        var chosen = s[order[bestIndex]];
        var next = bestIndex + 1 < order.Length ? s[order[bestIndex + 1]] : chosen;
        var threshold = (chosen + next) / 2f;
        // Predicted positive means score >= threshold: 'chosen' must be in and 'next' out. The midpoint of adjacent
        // floats can round onto either end; the chosen score itself is then the threshold.
        return threshold > next && threshold <= chosen ? threshold : chosen;
    }

    private static (float[] Scores, bool[] Positive) Counted(ReadOnlySpan<float> scores, ReadOnlySpan<float> labels)
    {
        CheckLengths(scores, labels);
        var s = new List<float>(scores.Length);
        var y = new List<bool>(scores.Length);
        for (var i = 0; i < scores.Length; i++)
        {
            if (float.IsNaN(labels[i]))
            {
                continue;
            }

            if (float.IsNaN(scores[i]))
            {
                throw new ArgumentException($"Score {i} is NaN.", nameof(scores));
            }

            s.Add(scores[i]);
            y.Add(labels[i] >= 0.5f);
        }

        return (s.ToArray(), y.ToArray());
    }

    private static void CheckLengths(ReadOnlySpan<float> scores, ReadOnlySpan<float> labels)
    {
        if (scores.Length != labels.Length)
        {
            throw new ArgumentException($"{scores.Length} scores but {labels.Length} labels.", nameof(labels));
        }
    }
}

/// <summary>True/false positives/negatives at one threshold.</summary>
public readonly record struct ConfusionCounts(int TruePositives, int FalsePositives, int TrueNegatives, int FalseNegatives)
{
    /// <summary>2TP / (2TP + FP + FN); 0 when there is neither a positive nor a positive prediction.</summary>
    public double F1 => TruePositives == 0 ? 0 : 2.0 * TruePositives / (2.0 * TruePositives + FalsePositives + FalseNegatives);

    /// <summary>Recall, TP / (TP + FN); NaN without positives.</summary>
    public double Sensitivity => Ratio(TruePositives, TruePositives + FalseNegatives);

    /// <summary>TN / (TN + FP); NaN without negatives.</summary>
    public double Specificity => Ratio(TrueNegatives, TrueNegatives + FalsePositives);

    /// <summary>TP / (TP + FP); NaN without positive predictions.</summary>
    public double Precision => Ratio(TruePositives, TruePositives + FalsePositives);

    private static double Ratio(int a, int b) => b == 0 ? double.NaN : (double)a / b;
}
