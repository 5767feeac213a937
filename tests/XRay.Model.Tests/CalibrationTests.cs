using XRay.Model.Evaluation;

namespace XRay.Model.Tests;

/// <summary>Calibration fitting and measures, operating-point rules and the manifest's calibration, on scores with known answers.</summary>
public class CalibrationTests
{
    /// <summary>Logits ~ N(0, 2) with labels drawn from sigmoid(a x + b): the generating (a, b) is the answer.</summary>
    private static (float[] Logits, float[] Labels) Drawn(double a, double b, int n, int seed)
    {
        var random = new Random(seed);
        var logits = new float[n];
        var labels = new float[n];
        for (var i = 0; i < n; i++)
        {
            var u = 1 - random.NextDouble();
            var x = 2 * Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * random.NextDouble());
            logits[i] = (float)x;
            labels[i] = random.NextDouble() < 1 / (1 + Math.Exp(-(a * x + b))) ? 1f : 0f;
        }

        return (logits, labels);
    }

    [Theory]
    [InlineData(1.5, -0.7)]
    [InlineData(0.4, 1.2)]
    [InlineData(1.0, 0.0)]
    public void Platt_RecoversTheGeneratingScaleAndOffset(double a, double b)
    {
        var (logits, labels) = Drawn(a, b, 40_000, seed: 3);

        var fit = CalibrationFit.Platt(logits, labels, plattTargets: false);

        Assert.InRange(fit.Scale, a - 0.05, a + 0.05);
        Assert.InRange(fit.Offset, b - 0.05, b + 0.05);
    }

    [Fact]
    public void Platt_CalibratesOverconfidentLogits_EceAndBrierDrop()
    {
        // The true probability is sigmoid(0.5 x - 1); the raw sigmoid(x) is overconfident and too high.
        var (logits, labels) = Drawn(0.5, -1, 20_000, seed: 5);
        var raw = logits.Select(Probabilities.Sigmoid).ToArray();

        var fit = CalibrationFit.Platt(logits, labels);
        var calibrated = logits.Select(fit.Apply).ToArray();

        Assert.True(CalibrationFit.ExpectedCalibrationError(raw, labels) > 0.1);
        Assert.True(CalibrationFit.ExpectedCalibrationError(calibrated, labels) < 0.02);
        Assert.True(CalibrationFit.Brier(calibrated, labels) < CalibrationFit.Brier(raw, labels) - 0.01);
    }

    [Fact]
    public void Platt_BackwardsLogits_AreNotInverted_EveryImageGetsTheSmoothedPrevalence()
    {
        float[] logits = [3, 2, 1, -1, -2, -3];
        float[] labels = [0, 0, 0, 1, 1, 0];

        var fit = CalibrationFit.Platt(logits, labels);

        Assert.Equal(0f, fit.Scale);
        // Platt's smoothed targets: positives (2 + 1) / (2 + 2) = 0.75, negatives 1 / (4 + 2); their mean over 6 images.
        var expected = (2 * 0.75 + 4 / 6.0) / 6;
        Assert.Equal(expected, fit.Apply(123f), 5);
        Assert.Equal(fit.Apply(-5f), fit.Apply(5f));
    }

    [Fact]
    public void Platt_WithoutPositives_IsTheIdentity_AndIgnoredLabelsAreLeftOut()
    {
        Assert.Equal(PlattScaling.Identity, CalibrationFit.Platt([1f, 2f, 3f], [0f, 0f, float.NaN]));
        var (logits, labels) = Drawn(1.5, -0.7, 4000, seed: 8);
        var withIgnored = labels.Select((y, i) => i % 10 == 0 ? float.NaN : y).ToArray();
        var kept = Enumerable.Range(0, logits.Length).Where(i => i % 10 != 0).ToArray();

        Assert.Equal(
            CalibrationFit.Platt(kept.Select(i => logits[i]).ToArray(), kept.Select(i => labels[i]).ToArray()),
            CalibrationFit.Platt(logits, withIgnored));
    }

    [Fact]
    public void EceBrierAndReliability_HaveTheirTextbookValues()
    {
        // All predicted 0.8, half positive: one bin, |0.5 - 0.8| = 0.3; Brier = (0.2^2 + 0.8^2) / 2 = 0.34.
        float[] p = [0.8f, 0.8f, 0.8f, 0.8f];
        float[] y = [1, 0, 1, 0];

        Assert.Equal(0.3, CalibrationFit.ExpectedCalibrationError(p, y), 6);
        Assert.Equal(0.34, CalibrationFit.Brier(p, y), 6);
        var bins = CalibrationFit.Reliability(p, y, bins: 5);
        Assert.Equal([0, 0, 0, 0, 4], bins.Select(b => b.Count));
        Assert.Equal(0.5, bins[4].ObservedRate);
        Assert.Equal(0.8, bins[4].MeanPredicted, 6);

        // Perfect predictions: no error.
        Assert.Equal(0, CalibrationFit.ExpectedCalibrationError([1f, 0f, 1f], [1f, 0f, 1f]));
        Assert.Equal(0, CalibrationFit.Brier([1f, 0f], [1f, 0f]));
        // A probability of exactly 1 falls in the last bin, not past it.
        Assert.Equal(1, CalibrationFit.Reliability([1f], [1f], bins: 10)[9].Count);
    }

    [Fact]
    public void Isotonic_PoolsAdjacentViolators()
    {
        var fit = CalibrationFit.Isotonic([1f, 2f, 3f, 4f], [0f, 1f, 0f, 1f]);

        Assert.Equal([1f, 3f, 4f], fit.Scores);
        Assert.Equal([0f, 0.5f, 1f], fit.Probabilities);
        Assert.Equal(0.5f, CalibrationFit.IsotonicAt(fit, 2.5f));
        Assert.Equal(0f, CalibrationFit.IsotonicAt(fit, -10f));
        Assert.Equal(1f, CalibrationFit.IsotonicAt(fit, 10f));
    }

    // Scores high to low; positives at 0.9, 0.8 and 0.6; five negatives.
    private static readonly float[] Scores = [0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.3f, 0.2f];
    private static readonly float[] Labels = [1, 1, 0, 1, 0, 0, 0, 0];

    [Theory]
    [InlineData("max-f1", 0.55f)]           // cut below 0.6: TP 3, FP 1, F1 6/7 (below 0.8: F1 4/5)
    [InlineData("max-f1:1", 0.75f)]         // precision 1 only down to 0.8
    [InlineData("sensitivity:1", 0.55f)]    // the highest threshold that still finds all three
    [InlineData("sensitivity:0.5", 0.75f)]  // 2 of 3 from 0.8 on; 0.9 alone finds 1 of 3
    [InlineData("specificity:0.8", 0.55f)]  // one false positive of five is allowed, two are not
    [InlineData("specificity:1", 0.75f)]    // no false positive: stop above 0.7
    public void OperatingPointRule_ChoosesTheKnownThreshold(string rule, float expected)
    {
        var (threshold, note) = OperatingPointRule.Parse(rule).Choose(Scores, Labels);

        Assert.Equal(expected, threshold, 6);
        Assert.Null(note);
    }

    [Fact]
    public void OperatingPointRule_UnreachablePrecision_NeverFlags()
    {
        float[] labels = [0, 1, 0, 1, 0, 0, 0, 0]; // the top score is a negative: precision 1 is out of reach

        var (threshold, note) = OperatingPointRule.MaxF1(1).Choose(Scores, labels);

        Assert.True(threshold > Scores.Max());
        Assert.Contains("never flagged", note);
        Assert.Equal(0, ClassificationMetrics.Confusion(Scores, labels, threshold).TruePositives + ClassificationMetrics.Confusion(Scores, labels, threshold).FalsePositives);
    }

    [Theory]
    [InlineData("f1")]
    [InlineData("sensitivity")]
    [InlineData("specificity:1.5")]
    [InlineData("max-f1:x")]
    public void OperatingPointRule_Parse_RefusesNonsense(string text) =>
        Assert.Throws<ArgumentException>(() => OperatingPointRule.Parse(text));

    [Fact]
    public void OperatingPointRule_DescribesItself() =>
        Assert.Equal("max F1 with precision >= 0.2", OperatingPointRule.Parse("max-f1:0.2").ToString());

    [Fact]
    public void Manifest_WithCalibrationAndOperatingPoints_RoundTrips_AndProbabilityMapAppliesIt()
    {
        var manifest = TestModels.Manifest(Architectures.SmallCnn, classes: 2) with
        {
            Thresholds = [0.25f, 0.5f],
            Calibration = new ProbabilityCalibration { Classes = [new PlattScaling(2f, -1f), PlattScaling.Identity], FittedOn = "oof" },
            OperatingPoints = new OperatingPoints
            {
                ChosenOn = "oof",
                Classes = [new OperatingPoint("class0", 0.25f, "max F1", 0.5, 0.9, double.NaN, 0.1, 0.05), new OperatingPoint("class1", 0.5f, "max F1", 1, 0, 0.5, 1, 0.5)],
            },
        };

        var back = ModelManifest.FromJson(manifest.ToJson());
        back.Validate();

        Assert.Equal(manifest.Calibration.Classes, back.Calibration!.Classes);
        Assert.Equal("oof", back.Calibration.FittedOn);
        Assert.Equal(manifest.OperatingPoints.Classes[1], back.OperatingPoints!.Classes[1]);
        Assert.True(double.IsNaN(back.OperatingPoints.Classes[0].Precision));
        var map = new ProbabilityMap(back);
        Assert.True(map.IsCalibrated);
        Assert.Equal(Probabilities.Sigmoid(2f * 0.3f - 1f), map.Probability(0, 0.3f));
        Assert.Equal(Probabilities.Sigmoid(0.3f), map.Probability(1, 0.3f));
        Assert.Equal([map.Probability(0, 1f), map.Probability(1, 2f), map.Probability(0, -1f), map.Probability(1, 0f)], map.Probabilities([1f, 2f, -1f, 0f]));
        Assert.False(new ProbabilityMap(TestModels.Manifest(Architectures.SmallCnn, classes: 2)).IsCalibrated);
    }

    [Fact]
    public void Manifest_Validate_RefusesCalibrationThatDoesNotFit()
    {
        var manifest = TestModels.Manifest(Architectures.SmallCnn, classes: 2);

        var wrongCount = manifest with { Calibration = new ProbabilityCalibration { Classes = [PlattScaling.Identity] } };
        Assert.Contains("1 entries for 2 classes", Assert.Throws<ArgumentException>(wrongCount.Validate).Message);
        var negative = manifest with { Calibration = new ProbabilityCalibration { Classes = [PlattScaling.Identity, new PlattScaling(-1f, 0f)] } };
        Assert.Contains("scale >= 0", Assert.Throws<ArgumentException>(negative.Validate).Message);
        var method = manifest with { Calibration = new ProbabilityCalibration { Method = "isotonic", Classes = [PlattScaling.Identity, PlattScaling.Identity] } };
        Assert.Contains("'isotonic' is not supported", Assert.Throws<ArgumentException>(method.Validate).Message);
        var mismatched = manifest with
        {
            Thresholds = [0.5f, 0.5f],
            OperatingPoints = new OperatingPoints { ChosenOn = "x", Classes = [new OperatingPoint("class0", 0.4f, "r", 0, 0, 0, 0, 0), new OperatingPoint("class1", 0.5f, "r", 0, 0, 0, 0, 0)] },
        };
        Assert.Contains("differ from thresholds", Assert.Throws<ArgumentException>(mismatched.Validate).Message);
    }

    [Fact]
    public void OutOfFoldPredictions_RoundTripThroughCsv()
    {
        using var dir = new TempDirectory();
        var path = Path.Combine(dir.Path, "oof.csv");
        var oof = new OutOfFoldPredictions(["a", "b"], ["x,1.png", "y.png"], ["p1", "p\"2"], [0, 1], [1.5f, -0.25f, 1e-7f, 3f], [1f, float.NaN, 0f, 0.5f]);

        oof.Write(path);
        var back = OutOfFoldPredictions.Read(path);

        Assert.Equal(oof.ClassNames, back.ClassNames);
        Assert.Equal(oof.Images, back.Images);
        Assert.Equal(oof.Patients, back.Patients);
        Assert.Equal(oof.Folds, back.Folds);
        Assert.Equal(oof.Logits, back.Logits);
        Assert.Equal(oof.Labels, back.Labels);
        File.WriteAllText(path, "image,patient,fold,logit:a,label:a\nx,p,0,nan,1\n");
        Assert.Contains(":2: logit", Assert.Throws<InvalidDataException>(() => OutOfFoldPredictions.Read(path)).Message);
    }
}
