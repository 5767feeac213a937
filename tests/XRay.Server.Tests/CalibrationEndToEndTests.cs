using XRay.Contracts.Inference;
using SkiaSharp;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Model;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>
/// A checkpoint with per-class calibration and chosen thresholds served through a real Kestrel: probabilities and
/// findings come from the calibrated values, logits stay raw, GetModelInfo shows the calibration and how the thresholds
/// were chosen; images that are clearly not chest radiographs are answered with warnings and no findings.
/// </summary>
public sealed class CalibrationEndToEndTests : IAsyncLifetime
{
    private const int Size = 224;
    private static readonly string[] Classes = ["a", "b", "c"];
    // Class a: sharper and shifted down; b: the identity; c: no signal (scale 0: every image gets sigmoid(2) = 0.88).
    private static readonly PlattScaling[] Scalings = [new(2.5f, -1f), PlattScaling.Identity, new(0f, 2f)];
    private static readonly float[] Thresholds = [0.3f, 0.5f, 0.8f];
    private readonly string _directory = Directory.CreateTempSubdirectory("xray-calibrated-model-").FullName;
    private TestServer _server = null!;

    public async Task InitializeAsync()
    {
        var manifest = new ModelManifest
        {
            Name = "calibrated-test",
            Version = "0.1.0",
            Architecture = Architectures.SmallCnn,
            ClassNames = Classes,
            Preprocessing = Architectures.DefaultPreprocessing(Architectures.SmallCnn),
            Thresholds = Thresholds,
            Calibration = new ProbabilityCalibration { Classes = Scalings, FittedOn = "test" },
            OperatingPoints = new OperatingPoints
            {
                ChosenOn = "synthetic scores",
                Classes = Classes.Select((c, i) => new OperatingPoint(c, Thresholds[i], $"rule {c}", 0.5, 0.5, 0.5, 0.1, 0.1)).ToArray(),
            },
        };
        TorchSharp.torch.manual_seed(3);
        using (var network = Architectures.Create(Architectures.SmallCnn, Classes.Length))
        {
            Checkpoint.Save(_directory, manifest, network);
        }

        _server = await TestServer.StartAsync(factory: null, waitUntilServing: true, $"--Model:Path={_directory}", "--Model:Warmup=none");
    }

    public async Task DisposeAsync()
    {
        await _server.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public async Task Classify_ProbabilitiesAndFindingsAreCalibrated_LogitsStayRaw()
    {
        float[] images = Images.RandomNormalised(4 * 3 * Size * Size, seed: 5);

        ClassifyResponse response = await _server.Client.ClassifyTensorAsync(images, [4, 3, Size, Size]).WaitAsync(TestServer.Timeout);

        Assert.Equal(4, response.Predictions.Count);
        foreach (Prediction prediction in response.Predictions)
        {
            Assert.Empty(prediction.Warnings);
            for (int c = 0; c < Classes.Length; c++)
            {
                float logit = prediction.Logits[c];
                float expected = 1f / (1f + MathF.Exp(-(Scalings[c].Scale * logit + Scalings[c].Offset)));
                Assert.InRange(prediction.Probabilities[c], expected - 1e-6f, expected + 1e-6f);
            }

            // Class c has no signal: every image gets sigmoid(2) = 0.881, above its 0.8 threshold.
            Assert.InRange(prediction.Probabilities[2], 0.8807f, 0.8808f);
            var above = Enumerable.Range(0, Classes.Length).Where(c => prediction.Probabilities[c] >= Thresholds[c]);
            Assert.Equal(above, prediction.Findings.Select(f => f.ClassIndex));
            Assert.All(prediction.Findings, f => Assert.Equal(prediction.Probabilities[f.ClassIndex], f.Probability));
        }

        // Calibration changed what class a reports: its probability is not the plain sigmoid of its logit.
        float rawA = response.Predictions[0].Logits[0];
        Assert.NotEqual(1f / (1f + MathF.Exp(-rawA)), response.Predictions[0].Probabilities[0], 3);
    }

    [Fact]
    public async Task GetModelInfo_ShowsCalibrationAndThresholdRules()
    {
        ModelInfo info = await _server.Client.GetModelInfoAsync().WaitAsync(TestServer.Timeout);

        Assert.Equal(Scalings.Select(k => (k.Scale, k.Offset)), info.Calibration.Select(k => (k.Scale, k.Offset)));
        Assert.Equal(Thresholds, info.Thresholds);
        Assert.Equal(["rule a, on synthetic scores", "rule b, on synthetic scores", "rule c, on synthetic scores"], info.ThresholdRules);
    }

    [Fact]
    public async Task Classify_ColourTinyAndBannerImages_GetWarningsAndNoFindings_AGrayFilmDoesNot()
    {
        byte[] gray = Images.Png(300, 260, seed: 3);
        byte[] colour = ColourPng(300, 260);
        byte[] tiny = Images.Png(16, 16, seed: 4);
        byte[] banner = Images.Png(900, 200, seed: 5);

        ClassifyResponse response = await _server.Client.ClassifyEncodedAsync([gray, colour, tiny, banner]).WaitAsync(TestServer.Timeout);

        Assert.Empty(response.Predictions[0].Warnings);
        Assert.NotEmpty(response.Predictions[0].Findings); // class c is always above its threshold
        Assert.Contains(response.Predictions[1].Warnings, w => w.Contains("colour image", StringComparison.Ordinal));
        Assert.Contains(response.Predictions[2].Warnings, w => w.Contains("16 x 16 pixels", StringComparison.Ordinal));
        Assert.Contains(response.Predictions[3].Warnings, w => w.Contains("aspect ratio 4.5:1", StringComparison.Ordinal));
        foreach (Prediction flagged in response.Predictions.Skip(1))
        {
            Assert.Single(flagged.Warnings);
            Assert.Empty(flagged.Findings);
            Assert.Equal(Classes.Length, flagged.Probabilities.Count); // still computed, for whoever wants to look
        }
    }

    [Fact]
    public async Task ModelInfer_CarriesTheSameWarnings_AsAParameter_ThatTheClientReadsBack()
    {
        byte[] gray = Images.Png(300, 260, seed: 3);
        byte[] colour = ColourPng(300, 260);
        ModelInfo info = await _server.Client.GetModelInfoAsync().WaitAsync(TestServer.Timeout);

        ModelInferResponse response = await _server.Client.InferAsync(OpenInference.Encoded(info.Name, [gray, colour])).WaitAsync(TestServer.Timeout);

        Assert.True(response.Parameters.TryGetValue("warnings", out InferParameter? parameter), "no warnings parameter");
        string warnings = parameter.StringParam;
        Assert.StartsWith("1: ", warnings, StringComparison.Ordinal);
        Assert.Contains("colour image", warnings, StringComparison.Ordinal);
        ClassifyResponse classified = OpenInference.ToClassifyResponse(response);
        Assert.Empty(classified.Predictions[0].Warnings);
        ClassifyResponse native = await _server.Client.ClassifyEncodedAsync([gray, colour]).WaitAsync(TestServer.Timeout);
        Assert.Equal(native.Predictions[1].Warnings, classified.Predictions[1].Warnings);
    }

    private static byte[] ColourPng(int width, int height)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque));
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                bitmap.SetPixel(x, y, new SKColor((byte)(x * 255 / width), (byte)(y * 255 / height), 90));
            }
        }

        using SKData data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }
}
