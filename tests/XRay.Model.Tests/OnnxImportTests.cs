using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using TorchSharp;
using Xunit.Abstractions;
using XRay.Model.Networks;
using XRay.Model.Onnx;
using static TorchSharp.torch;

namespace XRay.Model.Tests;

/// <summary>
/// The ImageNet ResNet-18 imported from ONNX computes what the ONNX graphs compute: ONNX Runtime runs the original
/// preprocessing + backbone graphs, TorchSharp the imported network, on the same 0..255 RGB images.
/// The ONNX files come from the NuGet package at build time (build/PretrainedResNet18.targets).
/// </summary>
public sealed class OnnxImportTests(ITestOutputHelper output)
{
    private static readonly string Backbone = CntkResNetImporter.BundledBackbone;
    private static readonly string MeanImage = CntkResNetImporter.MeanImageBeside(Backbone);
    private const int Size = 224;

    [Fact]
    public void ImportedNetwork_GivesTheOnnxFeatures_OnColourNoiseAndGrayImages()
    {
        var images = new List<float[]>
        {
            // Independent R, G, B noise: a wrong channel order or mean-image orientation would show here.
            RandomRgb(seed: 1),
            RandomRgb(seed: 2),
            GrayToRgb(TestImages.Pattern(Size, Size)),
        };
        if (SharedData.NihSample is { } nih)
        {
            images.Add(NihImage(nih));
        }

        var expected = images.Select(OnnxFeatures).ToList();
        using var network = (ResNetNetwork)CntkResNetImporter.Create(Backbone, MeanImage, gray: false, numClasses: 14);
        using var noGrad = no_grad();
        double worst = 0, scale = 0;
        for (var i = 0; i < images.Count; i++)
        {
            using var input = tensor(images[i], [1, 3, Size, Size]);
            using var features = network.forward_features(input);
            Assert.Equal([1L, 512], features.shape);
            var actual = features.data<float>().ToArray();
            worst = Math.Max(worst, actual.Zip(expected[i], (a, e) => Math.Abs(a - e)).Max());
            scale = Math.Max(scale, expected[i].Max(Math.Abs));
        }

        output.WriteLine($"{images.Count} images: max |TorchSharp - ONNX Runtime| over the 512-d features = {worst:E2} (largest feature {scale:F2})");
        Assert.True(scale > 1, $"features are degenerate (largest {scale})");
        Assert.True(worst < 1e-3, $"max abs difference {worst:E2}");
    }

    [Fact]
    public void GrayStem_OnOneChannel_EqualsTheRgbNetwork_OnTheReplicatedImage()
    {
        var gray = TestImages.Pattern(Size, Size);
        var plane = new float[Size * Size];
        for (var y = 0; y < Size; y++)
        {
            for (var x = 0; x < Size; x++)
            {
                plane[y * Size + x] = gray[y, x];
            }
        }

        using var rgb = CntkResNetImporter.Create(Backbone, MeanImage, gray: false, numClasses: 3, new Generator(5));
        using var mono = CntkResNetImporter.Create(Backbone, MeanImage, gray: true, numClasses: 3, new Generator(5));
        using var noGrad = no_grad();
        using var one = tensor(plane, [1, 1, Size, Size]);
        using var three = one.expand(1, 3, Size, Size).contiguous();
        using var expected = rgb.call(three);
        using var actual = mono.call(one);
        var diff = (actual - expected).abs().max().item<float>();
        output.WriteLine($"gray stem vs RGB network on a replicated gray image: max |logit difference| = {diff:E2}");
        Assert.True(diff < 1e-3, $"max abs logit difference {diff:E2}");
        Assert.Equal([64L, 1, 7, 7], mono.named_parameters().Single(p => p.name == "conv1.weight").parameter.shape);
    }

    [Fact]
    public void ImportedCheckpoint_SavesAndLoads_WithItsMeanImage()
    {
        var directory = Directory.CreateTempSubdirectory("xray-onnx-").FullName;
        try
        {
            foreach (var architecture in new[] { Architectures.ResNet18Cntk, Architectures.ResNet18CntkGray })
            {
                var gray = architecture == Architectures.ResNet18CntkGray;
                using var network = CntkResNetImporter.Create(Backbone, MeanImage, gray, numClasses: 14, new Generator(3));
                var manifest = TestModels.Manifest(architecture) with { Preprocessing = Architectures.DefaultPreprocessing(architecture) };
                var path = Path.Combine(directory, architecture);
                Checkpoint.Save(path, manifest, network);
                using var loaded = Checkpoint.Load(path);
                Assert.Contains(loaded.Network.named_buffers(), b => b.name == (gray ? "stem_offset" : "input_mean"));

                using var noGrad = no_grad();
                using var input = rand([2, gray ? 1 : 3, Size, Size], generator: new Generator(9)) * 255;
                using var before = network.call(input);
                using var after = loaded.Network.call(input);
                Assert.Equal(before.data<float>().ToArray(), after.data<float>().ToArray());
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void BaseWeightsCheckpoint_StoresOnlyWhatDiffersFromImageNet_AndLoadsIdentically()
    {
        var directory = Directory.CreateTempSubdirectory("xray-base-").FullName;
        try
        {
            using var network = CntkResNetImporter.Create(Backbone, MeanImage, gray: true, numClasses: 3, new Generator(1));
            var manifest = TestModels.Manifest(Architectures.ResNet18CntkGray, classes: 3) with
            {
                Preprocessing = Architectures.DefaultPreprocessing(Architectures.ResNet18CntkGray),
                BaseWeights = ModelManifest.BaseWeightsImageNetCntk,
            };
            var headOnly = Path.Combine(directory, "head-only");
            Checkpoint.Save(headOnly, manifest, network);
            var stored = Checkpoint.ReadWeightsHeader(Path.Combine(headOnly, Checkpoint.WeightsFileName));
            Assert.Equal(["fc.bias", "fc.weight"], stored.Keys.Order());
            Assert.True(new FileInfo(Path.Combine(headOnly, Checkpoint.WeightsFileName)).Length < 10_000);

            // A tensor that moved away from the base is stored as well, and the loaded network is the saved one.
            using (no_grad())
            {
                network.state_dict()["layer4.2.bn2.bias"].add_(0.5);
            }

            var tuned = Path.Combine(directory, "tuned");
            Checkpoint.Save(tuned, manifest, network);
            Assert.Equal(["fc.bias", "fc.weight", "layer4.2.bn2.bias"], Checkpoint.ReadWeightsHeader(Path.Combine(tuned, Checkpoint.WeightsFileName)).Keys.Order());
            using var loaded = Checkpoint.Load(tuned);
            using var noGrad = no_grad();
            using var input = rand([2, 1, Size, Size], generator: new Generator(2)) * 255;
            using var expected = network.call(input);
            using var actual = loaded.Network.call(input);
            Assert.Equal(expected.data<float>().ToArray(), actual.data<float>().ToArray());

            // The head must be in the file: without it the logits would be random.
            network.save(Path.Combine(tuned, Checkpoint.WeightsFileName), skip: ["fc.weight", "fc.bias"]);
            var headless = Assert.Throws<InvalidDataException>(() => Checkpoint.Load(tuned));
            Assert.Contains("fc.", headless.Message);

            var invalid = Assert.Throws<ArgumentException>(() => (manifest with { Architecture = Architectures.SmallCnn, Preprocessing = new PreprocessingSpec() }).Validate());
            Assert.Contains("baseWeights", invalid.Message);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void Import_RefusesFilesThatAreNotTheExpectedGraphs_NamingWhy()
    {
        var missing = Assert.Throws<OnnxImportException>(() => CntkResNetImporter.Create("/nonexistent/ResNet18.onnx", MeanImage, false, 2));
        Assert.Contains("does not exist", missing.Message);

        var garbage = Path.GetTempFileName();
        try
        {
            File.WriteAllBytes(garbage, [0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x01, 0x02]);
            var notOnnx = Assert.Throws<OnnxImportException>(() => CntkResNetImporter.Create(garbage, MeanImage, false, 2));
            Assert.Contains("is not an ONNX model", notOnnx.Message);
        }
        finally
        {
            File.Delete(garbage);
        }

        // The two graphs swapped: the backbone has no channel Split, the preprocessing graph no convolution.
        var swapped = Assert.Throws<OnnxImportException>(() => CntkResNetImporter.Create(Backbone, Backbone, false, 2));
        Assert.Contains("expected one Split node", swapped.Message);
        var noConv = Assert.Throws<OnnxImportException>(() => CntkResNetImporter.ReadBackbone(MeanImage));
        Assert.Contains("expected one Conv node", noConv.Message);
    }

    [Fact]
    public void DefaultPreprocessing_OfTheCntkNetworks_Gives0To255PixelValues()
    {
        var png = TestImages.GrayPng(TestImages.Pattern(Size, Size));
        var pattern = TestImages.Pattern(Size, Size);
        foreach (var architecture in new[] { Architectures.ResNet18Cntk, Architectures.ResNet18CntkGray })
        {
            var preprocessor = new ImagePreprocessor(Architectures.DefaultPreprocessing(architecture));
            var values = new float[preprocessor.OutputLength];
            preprocessor.Decode(png, values);
            Assert.Equal(Architectures.InputChannels(architecture) * Size * Size, values.Length);
            for (var c = 0; c < Architectures.InputChannels(architecture); c++)
            {
                Assert.Equal(pattern[10, 20], values[c * Size * Size + 10 * Size + 20], 3);
                Assert.Equal(pattern[200, 100], values[c * Size * Size + 200 * Size + 100], 3);
            }
        }
    }

    /// <summary>ONNX Runtime: ResNetPreprocess.onnx (RGB -> BGR minus mean image), then ResNet18.onnx; 512 features.</summary>
    private static float[] OnnxFeatures(float[] rgb)
    {
        using var preprocess = new InferenceSession(MeanImage);
        using var backbone = new InferenceSession(Backbone);
        var input = new DenseTensor<float>(rgb, [1, 3, Size, Size]);
        using var prepared = preprocess.Run([NamedOnnxValue.CreateFromTensor(preprocess.InputMetadata.Keys.Single(), input)]);
        var bgr = prepared.Single().AsTensor<float>().ToArray();
        var next = new DenseTensor<float>(bgr, [1, 3, Size, Size]);
        using var result = backbone.Run([NamedOnnxValue.CreateFromTensor(backbone.InputMetadata.Keys.Single(), next)]);
        return result.Single().AsTensor<float>().ToArray();
    }

    private static float[] RandomRgb(int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, 3 * Size * Size).Select(_ => (float)random.Next(256)).ToArray();
    }

    private static float[] GrayToRgb(byte[,] gray)
    {
        var values = new float[3 * Size * Size];
        for (var c = 0; c < 3; c++)
        {
            for (var y = 0; y < Size; y++)
            {
                for (var x = 0; x < Size; x++)
                {
                    values[c * Size * Size + y * Size + x] = gray[y, x];
                }
            }
        }

        return values;
    }

    /// <summary>A real radiograph through the product's preprocessing for this network (0..255, replicated).</summary>
    private static float[] NihImage(string path)
    {
        var preprocessor = new ImagePreprocessor(Architectures.DefaultPreprocessing(Architectures.ResNet18Cntk));
        var values = new float[preprocessor.OutputLength];
        preprocessor.Decode(File.ReadAllBytes(path), values);
        return values;
    }
}
