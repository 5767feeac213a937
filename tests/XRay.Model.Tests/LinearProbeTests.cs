using SkiaSharp;
using XRay.Model.Evaluation;
using XRay.Model.Training;
using static TorchSharp.torch;

namespace XRay.Model.Tests;

/// <summary>The linear probe on cached backbone features: the features are what the head sees, the cache keys on what matters, heads learn and average.</summary>
public class LinearProbeTests
{
    private static ImageSet RandomImages(int count, int seed, int size = 224)
    {
        var random = new Random(seed);
        var planes = Enumerable.Range(0, count * size * size).Select(_ => (float)random.NextDouble()).ToArray();
        var names = Enumerable.Range(0, count).Select(i => $"image{i}").ToArray();
        return ImageSet.FromTensors(tensor(planes, [count, 1, size, size]), new float[count * 2], ["a", "b"], names, names);
    }

    [Fact]
    public void Features_ThroughTheNetworksOwnHead_GiveItsLogits_AndSetHeadInstallsAHead()
    {
        using var model = TestModels.Seeded(Architectures.ResNet18, classes: 2, seed: 3);
        using var set = RandomImages(3, seed: 1);
        var spec = Architectures.DefaultPreprocessing(Architectures.ResNet18);
        using var normalizer = new Normalizer(spec);

        var features = BackboneFeatures.Compute(model.Network, set, normalizer, AugmentationOptions.None, views: 1, seed: 1, batchSize: 2);
        var state = model.Network.state_dict();
        var head = new LinearHead(state["fc.weight"].data<float>().ToArray(), state["fc.bias"].data<float>().ToArray());

        Assert.Equal((3, 1, 512), (features.Count, features.Views, features.Dimension));
        var network = Trainer.PredictLogits(model.Network, set, normalizer);
        Assert.True(TestModels.MaxAbsDifference(network, head.Logits(features)) < 1e-4f);

        var other = new LinearHead(Enumerable.Range(0, 2 * 512).Select(i => (i % 7 - 3) / 100f).ToArray(), [0.5f, -0.5f]);
        LinearProbe.SetHead(model.Network, Architectures.ResNet18, other);
        Assert.True(TestModels.MaxAbsDifference(Trainer.PredictLogits(model.Network, set, normalizer), other.Logits(features)) < 1e-4f);
    }

    [Fact]
    public void Features_AugmentedViewsDiffer_AndTheCacheKeysOnAugmentationAndImages()
    {
        using var model = TestModels.Seeded(Architectures.ResNet18, classes: 2, seed: 3);
        using var set = RandomImages(2, seed: 2);
        using var other = RandomImages(2, seed: 9);
        var spec = Architectures.DefaultPreprocessing(Architectures.ResNet18);
        using var normalizer = new Normalizer(spec);
        var augmentation = new AugmentationOptions();

        var views = BackboneFeatures.Compute(model.Network, set, normalizer, augmentation, views: 2, seed: 1);
        Assert.NotEqual(views.Values.AsSpan(0, 512).ToArray(), views.Values.AsSpan(512, 512).ToArray());
        Assert.Throws<ArgumentException>(() => BackboneFeatures.Compute(model.Network, set, normalizer, AugmentationOptions.None, views: 2, seed: 1));

        var key = BackboneFeatures.Key(model.Network, "fc.", set, spec, augmentation, 2, 1);
        Assert.Equal(key, BackboneFeatures.Key(model.Network, "fc.", set, spec, augmentation, 2, 1));
        Assert.NotEqual(key, BackboneFeatures.Key(model.Network, "fc.", set, spec, AugmentationOptions.None, 2, 1));
        Assert.NotEqual(key, BackboneFeatures.Key(model.Network, "fc.", other, spec, augmentation, 2, 1));
        Assert.NotEqual(key, BackboneFeatures.Key(model.Network, "fc.", set, spec, augmentation, 3, 1));
        // The head is not part of the key: a probe's features do not depend on it.
        LinearProbe.SetHead(model.Network, Architectures.ResNet18, new LinearHead(new float[2 * 512], [1f, 2f]));
        Assert.Equal(key, BackboneFeatures.Key(model.Network, "fc.", set, spec, augmentation, 2, 1));
    }

    [Fact]
    public void FeatureCache_SavesOnce_ReadsBackTheSameValues_AndReplacesADamagedFile()
    {
        using var dir = new TempDirectory();
        var cache = new FeatureCache(Path.Combine(dir.Path, "features"));
        var computed = 0;
        BackboneFeatures Compute()
        {
            computed++;
            return new BackboneFeatures([1f, 2f, 3f, 4f, 5f, 6f], count: 3, views: 1, dimension: 2);
        }

        var first = cache.GetOrCompute("k1", Compute, out var firstHit);
        var second = cache.GetOrCompute("k1", Compute, out var secondHit);

        Assert.Equal((false, true, 1), (firstHit, secondHit, computed));
        Assert.Equal(first.Values, second.Values);
        Assert.Equal((3, 1, 2), (second.Count, second.Views, second.Dimension));
        File.WriteAllBytes(Path.Combine(cache.Directory, "k1.features"), [1, 2, 3]);
        cache.GetOrCompute("k1", Compute, out var damagedHit);
        Assert.Equal((false, 2), (damagedHit, computed));
        Assert.Equal(first.Values, BackboneFeatures.Load(Path.Combine(cache.Directory, "k1.features")).Values);
    }

    [Fact]
    public void Train_LearnsSeparableFeatures_AndAveragedHeadsGiveTheMeanLogits()
    {
        // Class a is feature 0 > 0; class b is feature 1 > 0; 8 noise features.
        var random = new Random(4);
        const int n = 200, d = 10;
        var values = Enumerable.Range(0, n * d).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        var labels = Enumerable.Range(0, n).SelectMany(i => new[] { values[i * d] > 0 ? 1f : 0f, values[i * d + 1] > 0 ? 1f : 0f }).ToArray();
        var features = new BackboneFeatures(values, n, 1, d);
        var options = new TrainingOptions { Epochs = 30, BatchSize = 16, LearningRate = 0.05, InitialWeights = "x.onnx", FrozenEpochs = 30, Augmentation = AugmentationOptions.None };

        var one = LinearProbe.Train(features, labels, 2, options, seed: 1);
        var again = LinearProbe.Train(features, labels, 2, options, seed: 1);
        var other = LinearProbe.Train(features, labels, 2, options, seed: 2);
        var averaged = LinearProbe.TrainAveraged(features, labels, 2, options, [1, 2]);

        Assert.Equal(one.Weight, again.Weight); // seeded: the same head
        Assert.NotEqual(one.Weight, other.Weight);
        var logits = averaged.Logits(features);
        for (var c = 0; c < 2; c++)
        {
            var column = Enumerable.Range(0, n).Select(i => logits[i * 2 + c]).ToArray();
            var truth = Enumerable.Range(0, n).Select(i => labels[i * 2 + c]).ToArray();
            Assert.True(ClassificationMetrics.Auroc(column, truth) > 0.98);
        }

        var mean = one.Logits(features).Zip(other.Logits(features), (x, y) => (x + y) / 2).ToArray();
        Assert.True(TestModels.MaxAbsDifference(mean, logits) < 1e-4f);
        Assert.True(LinearProbe.IsProbe(options));
        Assert.False(LinearProbe.IsProbe(options with { FrozenEpochs = 29 }));
    }
}

/// <summary>The cheap "is this a chest radiograph?" check, on what decoding saw.</summary>
public class RadiographCheckTests
{
    private static readonly ImagePreprocessor Preprocessor = new(Architectures.DefaultPreprocessing(Architectures.ResNet18CntkGray));

    private static ImageFacts Decode(byte[] encoded) => Preprocessor.Decode(encoded, new float[Preprocessor.OutputLength]);

    [Fact]
    public void GrayImages_InAnyEncoding_PassWithoutWarnings()
    {
        var pattern = TestImages.Pattern(300, 360);
        foreach (var encoded in new[] { TestImages.GrayPng(pattern), TestImages.RgbPng(pattern), TestImages.RgbaPng(pattern), TestImages.Jpeg(pattern, quality: 70) })
        {
            var facts = Decode(encoded);
            Assert.Equal((300, 360), (facts.Width, facts.Height));
            Assert.True(facts.ColourFraction <= RadiographCheck.MaxColourFraction, $"{facts.ColourFraction}");
            Assert.Empty(RadiographCheck.Warnings(facts));
        }
    }

    [Fact]
    public void ColourPhoto_TinyImageAndBanner_AreWarnedAbout()
    {
        using var bitmap = new SKBitmap(new SKImageInfo(256, 256, SKColorType.Rgba8888, SKAlphaType.Opaque));
        for (var y = 0; y < 256; y++)
        {
            for (var x = 0; x < 256; x++)
            {
                bitmap.SetPixel(x, y, new SKColor((byte)x, (byte)y, 128));
            }
        }

        using var data = bitmap.Encode(SKEncodedImageFormat.Jpeg, 90);
        var colour = Decode(data.ToArray());
        Assert.True(colour.ColourFraction > 0.5);
        Assert.Contains("colour image", Assert.Single(RadiographCheck.Warnings(colour)));

        Assert.Contains("16 x 16 pixels", Assert.Single(RadiographCheck.Warnings(Decode(TestImages.GrayPng(TestImages.Pattern(16, 16))))));
        Assert.Contains("aspect ratio 3.0:1", Assert.Single(RadiographCheck.Warnings(new ImageFacts(900, 300, 0))));
        Assert.Equal(3, RadiographCheck.Warnings(new ImageFacts(40, 100, 0.5)).Count);
        Assert.Empty(RadiographCheck.Warnings(new ImageFacts(RadiographCheck.MinShorterSide, 2 * RadiographCheck.MinShorterSide, 0)));
    }

    [NihSampleFact]
    public void NihSample_RgbaFullResolution_IsARadiograph()
    {
        var facts = Decode(File.ReadAllBytes(SharedData.NihSample!));

        Assert.Equal((1024, 1024), (facts.Width, facts.Height));
        Assert.Equal(0, facts.ColourFraction);
        Assert.Empty(RadiographCheck.Warnings(facts));
    }
}
