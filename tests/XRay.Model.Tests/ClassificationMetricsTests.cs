using XRay.Model.Evaluation;

namespace XRay.Model.Tests;

public class ClassificationMetricsTests
{
    [Fact]
    public void Auroc_PerfectAndReversedAndConstantScores()
    {
        float[] labels = [0, 0, 1, 1];
        Assert.Equal(1.0, ClassificationMetrics.Auroc([0.1f, 0.2f, 0.8f, 0.9f], labels));
        Assert.Equal(0.0, ClassificationMetrics.Auroc([0.9f, 0.8f, 0.2f, 0.1f], labels));
        Assert.Equal(0.5, ClassificationMetrics.Auroc([0.5f, 0.5f, 0.5f, 0.5f], labels));
    }

    [Fact]
    public void Auroc_WithTies_MatchesHandCount()
    {
        // Positives 0.8, 0.4, 0.4; negatives 0.4, 0.2. Pairs (pos, neg): (0.8,0.4)=1 (0.8,0.2)=1 (0.4,0.4)=1/2 (0.4,0.2)=1,
        // twice for the two positives at 0.4: (1 + 1 + 0.5 + 1 + 0.5 + 1) / 6 = 5/6.
        float[] scores = [0.8f, 0.4f, 0.4f, 0.4f, 0.2f];
        float[] labels = [1, 1, 1, 0, 0];
        Assert.Equal(5.0 / 6.0, ClassificationMetrics.Auroc(scores, labels), 12);
    }

    [Fact]
    public void Auroc_MatchesBruteForcePairCount_OnRandomScoresWithTies()
    {
        var random = new Random(3);
        var scores = Enumerable.Range(0, 200).Select(_ => random.Next(10) / 10f).ToArray();
        var labels = Enumerable.Range(0, 200).Select(_ => random.NextDouble() < 0.3 ? 1f : 0f).ToArray();
        double wins = 0, pairs = 0;
        for (var i = 0; i < 200; i++)
        {
            for (var j = 0; j < 200; j++)
            {
                if (labels[i] == 1 && labels[j] == 0)
                {
                    pairs++;
                    wins += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0;
                }
            }
        }

        Assert.Equal(wins / pairs, ClassificationMetrics.Auroc(scores, labels), 12);
    }

    [Fact]
    public void Auroc_IgnoresNaNLabels_AndIsNaNWithoutBothClasses()
    {
        Assert.Equal(1.0, ClassificationMetrics.Auroc([0.1f, 0.99f, 0.9f], [0, float.NaN, 1]));
        Assert.True(double.IsNaN(ClassificationMetrics.Auroc([0.1f, 0.2f], [1, 1])));
        Assert.True(double.IsNaN(ClassificationMetrics.Auroc([0.1f, 0.2f], [0, float.NaN])));
    }

    [Fact]
    public void Auroc_SoftLabels_CountAsTheirNearestHardLabel()
    {
        Assert.Equal(1.0, ClassificationMetrics.Auroc([0.1f, 0.2f, 0.8f], [0.2f, 0.4f, 0.7f]));
    }

    [Fact]
    public void AveragePrecision_MatchesHandComputedValue()
    {
        // Descending: 0.9 (pos) P=1 R=1/2; 0.8 (neg) no recall step; 0.7 (pos) P=2/3 R=1. AP = 1/2*1 + 1/2*2/3 = 5/6.
        Assert.Equal(5.0 / 6.0, ClassificationMetrics.AveragePrecision([0.9f, 0.8f, 0.7f, 0.1f], [1, 0, 1, 0]), 12);
    }

    [Fact]
    public void AveragePrecision_TiedScoresFormOneThreshold()
    {
        // All four tied: one step to recall 1 at precision 2/4 (scikit-learn gives 0.5).
        Assert.Equal(0.5, ClassificationMetrics.AveragePrecision([0.3f, 0.3f, 0.3f, 0.3f], [1, 0, 1, 0]), 12);
    }

    [Fact]
    public void Confusion_AtThreshold_CountsAndF1()
    {
        var counts = ClassificationMetrics.Confusion([0.9f, 0.6f, 0.4f, 0.2f, 0.7f], [1, 0, 1, 0, float.NaN], 0.5f);
        Assert.Equal(new ConfusionCounts(TruePositives: 1, FalsePositives: 1, TrueNegatives: 1, FalseNegatives: 1), counts);
        Assert.Equal(0.5, counts.F1, 12);
        Assert.Equal(0.5, counts.Sensitivity, 12);
        Assert.Equal(0.5, counts.Specificity, 12);
    }

    [Fact]
    public void CalibrateThreshold_MaxF1_SeparatesPerfectlySeparableScores()
    {
        float[] scores = [0.1f, 0.2f, 0.3f, 0.6f, 0.7f];
        float[] labels = [0, 0, 0, 1, 1];
        var threshold = ClassificationMetrics.CalibrateThreshold(scores, labels, ThresholdMethod.MaxF1);

        Assert.Equal(0.45f, threshold, 5); // halfway between 0.3 and 0.6
        Assert.Equal(1.0, ClassificationMetrics.Confusion(scores, labels, threshold).F1);
    }

    [Fact]
    public void CalibrateThreshold_YoudenAndMaxF1_DifferWhenALowPositiveCostsFewFalsePositivesRelativeToAllNegatives()
    {
        // Positives 0.9, 0.8, 0.3; negatives 0.7, 0.6, 0.5, 0.4 and sixteen below 0.3.
        // Down to 0.8: TP 2, FP 0 -> F1 0.8, J 2/3. Down to 0.3: TP 3, FP 4 -> F1 0.6, J 1 - 4/20 = 0.8.
        float[] scores = [0.9f, 0.8f, 0.3f, 0.7f, 0.6f, 0.5f, 0.4f, .. Enumerable.Range(0, 16).Select(k => 0.2f - k * 0.01f)];
        float[] labels = [1, 1, 1, .. Enumerable.Repeat(0f, 20)];

        Assert.Equal(0.75f, ClassificationMetrics.CalibrateThreshold(scores, labels, ThresholdMethod.MaxF1), 5);
        Assert.Equal(0.25f, ClassificationMetrics.CalibrateThreshold(scores, labels, ThresholdMethod.Youden), 5);
    }

    [Fact]
    public void CalibrateThreshold_WithoutBothClasses_Returns05()
    {
        Assert.Equal(0.5f, ClassificationMetrics.CalibrateThreshold([0.2f, 0.9f], [0, 0], ThresholdMethod.MaxF1));
    }

    [Fact]
    public void Bootstrap_IntervalContainsEstimate_AndIsReproducible()
    {
        var random = new Random(5);
        var labels = Enumerable.Range(0, 120).Select(i => i % 3 == 0 ? 1f : 0f).ToArray();
        var scores = labels.Select(l => (float)(l * 0.6 + random.NextDouble())).ToArray();
        double[] Statistic(int[] idx) => [ClassificationMetrics.Auroc(idx.Select(i => scores[i]).ToArray(), idx.Select(i => labels[i]).ToArray())];

        var first = Bootstrap.Percentile(120, Statistic, resamples: 500, seed: 9)[0];
        var second = Bootstrap.Percentile(120, Statistic, resamples: 500, seed: 9)[0];

        Assert.Equal(first, second);
        Assert.Equal(ClassificationMetrics.Auroc(scores, labels), first.Value, 12);
        Assert.InRange(first.Value, first.Lower, first.Upper);
        Assert.True(first.Upper - first.Lower is > 0.02 and < 0.4, $"interval {first}");
    }

    [Fact]
    public void Evaluator_MeanAurocAndRocCurve()
    {
        // Two classes, three images: class 0 perfect, class 1 reversed.
        float[] probabilities = [0.9f, 0.1f, 0.2f, 0.8f, 0.1f, 0.7f];
        float[] labels = [1, 1, 0, 0, 0, 0];
        var result = Evaluator.Evaluate(probabilities, labels, ["a", "b"], [0.5f, 0.5f], resamples: 50);

        Assert.Equal(1.0, result.Classes[0].Auroc.Value);
        Assert.Equal(0.0, result.Classes[1].Auroc.Value);
        Assert.Equal(0.5, result.MeanAuroc.Value);
        Assert.Equal((0.0, 0.0), result.Classes[0].RocCurve[0]);
        Assert.Equal((1.0, 1.0), result.Classes[0].RocCurve[^1]);
    }
}
