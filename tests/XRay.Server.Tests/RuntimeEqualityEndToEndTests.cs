using XRay.Contracts.V1;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>
/// The built-in default model served through a real Kestrel on each runtime: ONNX Runtime (the checkpoint exported
/// to ONNX at load time) answers what TorchSharp answers, within 1e-4, for real radiographs (the NIH sample in
/// shared/data; generated PNGs when it is absent) sent one per request and batched together.
/// </summary>
public sealed class RuntimeEqualityEndToEndTests
{
    private const float Tolerance = 1e-4f;

    [Fact]
    public async Task OnnxRuntimeAndTorch_ServeTheDefaultModel_WithEqualAnswers()
    {
        List<byte[]> images = RealOrGeneratedPngs(6);
        await using TestServer torch = await TestServer.StartAsync(null, true, "--Model:Runtime=torch", "--Model:Warmup=none");
        ClassifyResponse[] expected = await ClassifyEachAsync(torch, images);
        ModelInfo torchInfo = await torch.Client.GetModelInfoAsync().WaitAsync(TestServer.Timeout);
        await torch.DisposeAsync();

        await using TestServer onnx = await TestServer.StartAsync(null, true, "--Model:Runtime=onnxruntime", "--Model:Warmup=none");
        ModelInfo onnxInfo = await onnx.Client.GetModelInfoAsync().WaitAsync(TestServer.Timeout);
        Assert.Equal("torch", torchInfo.Runtime);
        Assert.Equal("onnxruntime", onnxInfo.Runtime);

        // One request per image, concurrently, so that the batcher forms batches of several sizes.
        ClassifyResponse[] actual = await ClassifyEachAsync(onnx, images);
        // And all in one request: one batch.
        ClassifyResponse together = await onnx.Client.ClassifyEncodedAsync(images.Select(i => (ReadOnlyMemory<byte>)i)).WaitAsync(TestServer.Timeout);
        for (int i = 0; i < images.Count; i++)
        {
            Prediction reference = expected[i].Predictions.Single();
            AssertClose(reference, actual[i].Predictions.Single());
            AssertClose(reference, together.Predictions[i]);
        }
    }

    [Fact]
    public async Task Bf16OnOnnxRuntime_StopsTheServerWithAMessageNamingTheSettings()
    {
        var error = await Record.ExceptionAsync(() => TestServer.StartAsync(null, true, "--Model:Runtime=onnxruntime", "--Model:Precision=bf16"));
        Assert.NotNull(error);
        Assert.Contains("Model:Runtime onnxruntime", error.ToString());
    }

    private static void AssertClose(Prediction expected, Prediction actual)
    {
        Assert.Equal(expected.Logits.Count, actual.Logits.Count);
        for (int c = 0; c < expected.Logits.Count; c++)
        {
            Assert.True(Math.Abs(expected.Logits[c] - actual.Logits[c]) <= Tolerance,
                $"class {c}: torch logit {expected.Logits[c]}, onnxruntime {actual.Logits[c]}");
            Assert.True(Math.Abs(expected.Probabilities[c] - actual.Probabilities[c]) <= Tolerance);
        }
    }

    private static Task<ClassifyResponse[]> ClassifyEachAsync(TestServer server, List<byte[]> images) =>
        Task.WhenAll(images.Select(image => server.Client.ClassifyEncodedAsync([image]).WaitAsync(TestServer.Timeout)));

    private static List<byte[]> RealOrGeneratedPngs(int count)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string folder = Path.Combine(dir.FullName, "shared", "data", "nih-cxr14-sample", "images");
            if (Directory.Exists(folder))
            {
                return Directory.GetFiles(folder, "*.png").Order().Take(count).Select(File.ReadAllBytes).ToList();
            }
        }

        return Enumerable.Range(0, count).Select(seed => Images.Png(300, 260, seed)).ToList();
    }
}
