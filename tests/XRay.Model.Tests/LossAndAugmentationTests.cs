using XRay.Model.Training;
using static TorchSharp.torch;

namespace XRay.Model.Tests;

public class MaskedBceLossTests
{
    [Fact]
    public void Compute_MatchesHandValue_MeanOverCountedLabels()
    {
        using var logits = tensor(new float[] { 0f, 2f, -1f, 3f }, [2, 2]);
        using var targets = tensor(new float[] { 1f, 0f, 0.25f, 1f }, [2, 2]);
        using var mask = tensor(new float[] { 1f, 1f, 1f, 0f }, [2, 2]);

        using var loss = MaskedBceLoss.Compute(logits, targets, mask);

        // BCE(x, y) = softplus(x) - y x; soft target 0.25 used as it is; the masked fourth term is left out.
        static double Bce(double x, double y) => Math.Log(1 + Math.Exp(x)) - y * x;
        var expected = (Bce(0, 1) + Bce(2, 0) + Bce(-1, 0.25)) / 3;
        Assert.Equal(expected, loss.item<float>(), 5);
    }

    [Fact]
    public void Compute_IgnoredLabel_GetsNoGradient_AndDoesNotChangeTheLoss()
    {
        using var targets = tensor(new float[] { 1f, 0f, 1f }, [1, 3]);
        using var mask = tensor(new float[] { 1f, 0f, 1f }, [1, 3]);
        using var a = tensor(new float[] { 0.5f, -4f, 1f }, [1, 3]).requires_grad_();
        using var b = tensor(new float[] { 0.5f, 9f, 1f }, [1, 3]);

        using var lossA = MaskedBceLoss.Compute(a, targets, mask);
        using var lossB = MaskedBceLoss.Compute(b, targets, mask);
        lossA.backward();

        Assert.Equal(lossA.item<float>(), lossB.item<float>());
        var grad = a.grad!.data<float>().ToArray();
        Assert.Equal(0f, grad[1]);
        Assert.NotEqual(0f, grad[0]);
    }

    [Fact]
    public void Compute_PosWeight_ScalesOnlyThePositiveTerm()
    {
        using var logits = tensor(new float[] { 0.3f, 0.3f }, [1, 2]);
        using var targets = tensor(new float[] { 1f, 0f }, [1, 2]);
        using var mask = ones(1, 2);
        using var posWeight = tensor(new float[] { 3f, 3f });

        using var plain = MaskedBceLoss.Compute(logits, targets, mask);
        using var weighted = MaskedBceLoss.Compute(logits, targets, mask, posWeight);

        var positive = Math.Log(1 + Math.Exp(-0.3));
        var negative = Math.Log(1 + Math.Exp(0.3));
        Assert.Equal((positive + negative) / 2, plain.item<float>(), 5);
        Assert.Equal((3 * positive + negative) / 2, weighted.item<float>(), 5);
    }

    [Fact]
    public void Compute_EverythingMasked_IsZero()
    {
        using var loss = MaskedBceLoss.Compute(ones(2, 3), ones(2, 3), zeros(2, 3));
        Assert.Equal(0f, loss.item<float>());
    }

    [Fact]
    public void BalancedPosWeight_IsNegativesOverPositives_CountingOnlyUnmaskedLabels()
    {
        using var set = ImageSet.FromTensors(zeros(5, 1, 4, 4),
            [1, 1, 0, float.NaN, 0, 0, 0, 0, 1, float.NaN], ["a", "b"],
            ["1", "2", "3", "4", "5"], ["1", "2", "3", "4", "5"]);

        // a: labels 1, 0, 0, 0, 1 -> 3/2; b: 1, NaN, 0, 0, NaN -> 2/1.
        Assert.Equal([1.5f, 2f], MaskedBceLoss.BalancedPosWeight(set));
    }
}

public class LearningRateScheduleTests
{
    [Fact]
    public void At_WarmsUpLinearly_ThenDecaysByCosineToTheFinalFraction()
    {
        // 4 warm-up steps, then 100 decay steps (105 in all): half-way down the cosine is the mid-point of 1 and 0.01.
        Assert.Equal(0.25, LearningRateSchedule.At(0, 105, 4, 1.0, 0.01), 12);
        Assert.Equal(1.0, LearningRateSchedule.At(3, 105, 4, 1.0, 0.01), 12);
        Assert.Equal(1.0, LearningRateSchedule.At(4, 105, 4, 1.0, 0.01), 12);
        Assert.Equal(0.505, LearningRateSchedule.At(54, 105, 4, 1.0, 0.01), 12);
        Assert.Equal(0.01, LearningRateSchedule.At(104, 105, 4, 1.0, 0.01), 12);
    }
}

public class SyntheticChestXrayTests
{
    [Fact]
    public void Render_IsReproducible_PerIndex_AndSeedsDiffer()
    {
        var generator = new SyntheticChestXray(seed: 5);
        var (a, labelsA) = generator.Render(17, 64);
        var (b, labelsB) = generator.Render(17, 64);
        var (c, _) = new SyntheticChestXray(seed: 6).Render(17, 64);

        Assert.Equal(a, b);
        Assert.Equal(labelsA, labelsB);
        Assert.NotEqual(a, c);
    }

    [Fact]
    public void Render_ProducesMultiHotLabels_AtTheRequestedPrevalence()
    {
        var generator = new SyntheticChestXray(seed: 1, prevalence: 0.3);
        var labels = Enumerable.Range(0, 600).Select(i => generator.Render(i, 16).Labels).ToArray();

        Assert.All(labels, l => Assert.All(l, v => Assert.True(v is 0f or 1f)));
        Assert.InRange(labels.Average(l => l.Average()), 0.25, 0.35);
        Assert.Contains(labels, l => l.Sum() >= 2); // several findings at once
        Assert.Contains(labels, l => l.Sum() == 0);
    }

    [Fact]
    public void Render_Cardiomegaly_WidensTheBrightCentralSilhouette()
    {
        // The enlarged heart is a visible, localised difference: the lower-middle band of the image is brighter.
        var generator = new SyntheticChestXray(seed: 2);
        const int size = 64;
        double Band(byte[] pixels)
        {
            double sum = 0;
            for (var y = 36; y < 46; y++)
            {
                for (var x = 12; x < 52; x++)
                {
                    sum += pixels[y * size + x];
                }
            }

            return sum / 400;
        }

        var images = Enumerable.Range(0, 300).Select(i => generator.Render(i, size)).ToArray();
        var enlarged = images.Where(i => i.Labels[0] == 1).Average(i => Band(i.Pixels));
        var normal = images.Where(i => i.Labels[0] == 0).Average(i => Band(i.Pixels));
        Assert.True(enlarged > normal + 10, $"mean band intensity {enlarged:F1} (cardiomegaly) vs {normal:F1}");
    }

    [Fact]
    public void WriteDataset_WritesPngsAndALabelFileThatReadsBack()
    {
        using var dir = new TempDirectory();
        var csv = new SyntheticChestXray(seed: 3).WriteDataset(dir.Path, count: 4, size: 32);

        var data = LabelCsvFile.Read(csv);
        Assert.Equal(SyntheticChestXray.ClassNames, data.ClassNames);
        Assert.Equal(4, data.Images.Count);
        var preprocessor = new ImagePreprocessor(new PreprocessingSpec { CropSize = 32, ResizeSize = 32 });
        preprocessor.Decode(File.ReadAllBytes(data.Images[2].ImagePath), new float[preprocessor.OutputLength]);
        Assert.Equal(new SyntheticChestXray(seed: 3).Render(2, 32).Labels, data.Images[2].Labels);
    }
}

public class RadiographAugmentationTests
{
    [Fact]
    public void Apply_Disabled_ReturnsTheSameValues()
    {
        using var luma = rand(2, 1, 16, 16);
        using var result = RadiographAugmentation.Apply(luma, AugmentationOptions.None, new Random(1));
        Assert.True(result.equal(luma).all().item<bool>());
    }

    [Fact]
    public void Apply_KeepsShapeAndRange_IsSeeded_AndChangesTheImage()
    {
        using var luma = rand(4, 1, 32, 32);
        using var a = RadiographAugmentation.Apply(luma, new AugmentationOptions(), new Random(7));
        using var b = RadiographAugmentation.Apply(luma, new AugmentationOptions(), new Random(7));

        Assert.Equal(luma.shape, a.shape);
        Assert.True(a.equal(b).all().item<bool>());
        Assert.False(a.equal(luma).all().item<bool>());
        Assert.True(a.min().item<float>() >= 0f && a.max().item<float>() <= 1f);
    }

    [Fact]
    public void Apply_ByDefault_NeverMirrorsLeftAndRight()
    {
        // A bright left half stays on the left under the default small rotations and shifts.
        using var luma = zeros(16, 1, 32, 32);
        luma[.., .., .., ..16] = tensor(1f);
        using var moved = RadiographAugmentation.Apply(luma, new AugmentationOptions { Brightness = 0, Contrast = 0 }, new Random(3));

        var left = moved[.., .., .., ..16].mean([1, 2, 3]).data<float>().ToArray();
        var right = moved[.., .., .., 16..].mean([1, 2, 3]).data<float>().ToArray();
        Assert.All(left.Zip(right), p => Assert.True(p.First > p.Second + 0.5f));
    }
}
