using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1Alpha;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Model;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>The real default model (TorchSharp) served through a real Kestrel, compared with the same model in process.</summary>
public sealed class ClassifyEndToEndTests : IAsyncLifetime
{
    private const int Size = 224;
    private TestServer _server = null!;
    private ModelRunner _reference = null!;
    private ImagePreprocessor _preprocessor = null!;

    public async Task InitializeAsync()
    {
        _server = await TestServer.StartAsync();
        _reference = new ModelRunner(DefaultModel.Create(), new RunnerOptions { Device = "cpu" });
        _preprocessor = new ImagePreprocessor(_reference.Manifest.Preprocessing);
    }

    public async Task DisposeAsync()
    {
        _reference.Dispose();
        await _server.DisposeAsync();
    }

    private async Task<float[]> ReferenceLogitsAsync(float[] normalisedImage) =>
        await _reference.RunAsync(normalisedImage, 1).WaitAsync(TestServer.Timeout);

    private void AssertMatches(float[] expectedLogits, Prediction prediction) =>
        Predictions.AssertMatches(expectedLogits, prediction, calibration: new ProbabilityMap(_reference.Manifest));

    [Fact]
    public async Task Classify_Uint8Grayscale_MatchesInProcessModel()
    {
        byte[] pixels = Images.RandomPixels(Size * Size, seed: 1);
        var expected = new float[_preprocessor.OutputLength];
        _preprocessor.NormalizeUInt8(pixels, 1, expected);

        ClassifyResponse response = await _server.Client.ClassifyTensorAsync(pixels, [1, Size, Size]).WaitAsync(TestServer.Timeout);

        Assert.Single(response.Predictions);
        AssertMatches(await ReferenceLogitsAsync(expected), response.Predictions[0]);
        Assert.Equal(_reference.Manifest.Name, response.ModelName);
    }

    [Fact]
    public async Task Classify_Float32Batch_EachImageMatchesInProcessModel()
    {
        int channels = _reference.Manifest.Preprocessing.Channels;
        float[] images = Images.RandomNormalised(3 * channels * Size * Size, seed: 2);

        ClassifyResponse response = await _server.Client.ClassifyTensorAsync(images, [3, channels, Size, Size]).WaitAsync(TestServer.Timeout);

        Assert.Equal(3, response.Predictions.Count);
        int length = channels * Size * Size;
        for (int i = 0; i < 3; i++)
        {
            AssertMatches(await ReferenceLogitsAsync(images.AsSpan(i * length, length).ToArray()), response.Predictions[i]);
        }
    }

    [Fact]
    public async Task Classify_Png_IsPreprocessedLikeTheTrainer()
    {
        byte[] png = Images.Png(300, 260, seed: 3);
        var expected = new float[_preprocessor.OutputLength];
        _preprocessor.Decode(png, expected);

        ClassifyResponse response = await _server.Client.ClassifyEncodedAsync([png]).WaitAsync(TestServer.Timeout);

        AssertMatches(await ReferenceLogitsAsync(expected), response.Predictions[0]);
        // Findings are exactly the classes at or above their thresholds.
        var thresholds = _reference.Manifest.EffectiveThresholds;
        var above = Enumerable.Range(0, thresholds.Count).Where(c => response.Predictions[0].Probabilities[c] >= thresholds[c]);
        Assert.Equal(above, response.Predictions[0].Findings.Select(f => f.ClassIndex));
    }

    [Fact]
    public async Task ClassifyStream_64RequestsInFlight_AllAnsweredWithTheirOwnIds()
    {
        await using ClassifyStreamSession stream = _server.Client.OpenStream(TestServer.Timeout);
        var calls = Enumerable.Range(0, 64).Select(i =>
        {
            byte[] pixels = Images.RandomPixels(Size * Size, seed: 100 + i);
            return (Pixels: pixels, Response: stream.ClassifyAsync(new ClassifyRequest
            {
                RequestId = $"r{i}",
                Tensor = Tensors.UInt8(pixels, 1, Size, Size),
            }));
        }).ToArray();

        ClassifyResponse[] responses = await Task.WhenAll(calls.Select(c => c.Response)).WaitAsync(TestServer.Timeout);

        Assert.Equal(Enumerable.Range(0, 64).Select(i => $"r{i}"), responses.Select(r => r.RequestId));
        foreach (int i in new[] { 0, 31, 63 })
        {
            var expected = new float[_preprocessor.OutputLength];
            _preprocessor.NormalizeUInt8(calls[i].Pixels, 1, expected);
            AssertMatches(await ReferenceLogitsAsync(expected), responses[i].Predictions[0]);
        }
    }

    [Fact]
    public async Task GetModelInfo_DescribesTheServedModel()
    {
        ModelInfo info = await _server.Client.GetModelInfoAsync().WaitAsync(TestServer.Timeout);

        Assert.Equal(ChestXrayFindings.Nih14, info.ClassNames);
        Assert.Equal(info.ClassNames.Count, info.Thresholds.Count);
        Assert.Equal(_reference.Manifest.Architecture, info.Architecture);
        Assert.Equal(32, info.Batching.MaxBatchSize);
        Assert.Equal(Size, info.Preprocessing.CropSize);
        Assert.Equal(_reference.Manifest.Preprocessing.Channels, info.Preprocessing.Mean.Count);
        Assert.Equal(_reference.Manifest.Preprocessing.Color, info.Preprocessing.Color);
        Assert.Contains(info.Inputs, input => input.Dtype == DataType.Uint8 && input.Shape.SequenceEqual(new long[] { -1, 1, Size, Size }));
        Assert.Equal("cpu", info.Device);
    }

    [Fact]
    public async Task HealthAndReflection_Answer()
    {
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await _server.Client.CheckHealthAsync().WaitAsync(TestServer.Timeout));
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await _server.Client.CheckHealthAsync("xray.v1.Classifier").WaitAsync(TestServer.Timeout));

        var reflection = new ServerReflection.ServerReflectionClient(_server.Channel);
        using var call = reflection.ServerReflectionInfo();
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None).WaitAsync(TestServer.Timeout));
        var services = call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).ToArray();
        Assert.Contains("xray.v1.Classifier", services);
        Assert.Contains("grpc.health.v1.Health", services);
    }

    [Theory]
    [InlineData(new long[] { 224, 224 }, "has 2 dimensions")]
    [InlineData(new long[] { 2, 224, 224 }, "is not accepted")]
    [InlineData(new long[] { 1, 1, 100, 224 }, "is not accepted")]
    [InlineData(new long[] { 0, 1, 224, 224 }, "is not accepted")]
    public async Task Classify_BadShape_IsInvalidArgument(long[] shape, string message)
    {
        byte[] pixels = new byte[Math.Max(1, shape.Aggregate(1L, (a, b) => a * b))];

        var error = await Assert.ThrowsAsync<RpcException>(() => _server.Client.ClassifyTensorAsync(pixels, shape)).WaitAsync(TestServer.Timeout);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains(message, error.Status.Detail);
    }

    [Fact]
    public async Task Classify_BadInputs_AreInvalidArgumentWithPreciseMessages()
    {
        async Task<string> Reject(ClassifyRequest request)
        {
            var error = await Assert.ThrowsAsync<RpcException>(() => _server.Client.ClassifyAsync(request)).WaitAsync(TestServer.Timeout);
            Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
            return error.Status.Detail;
        }

        Assert.Contains("no input", await Reject(new ClassifyRequest()));
        Assert.Contains("needs 50176", await Reject(new ClassifyRequest { Tensor = Tensors.UInt8(new byte[100], 1, Size, Size) }));
        Assert.Contains("dtype", await Reject(new ClassifyRequest { Tensor = new Tensor { Shape = { 1, Size, Size }, Data = Google.Protobuf.ByteString.CopyFrom(new byte[Size * Size]) } }));
        var nan = new float[Size * Size];
        nan[7] = float.NaN;
        Assert.Contains("element 7", await Reject(new ClassifyRequest { Tensor = Tensors.Float32(nan, 1, Size, Size) }));
        Assert.Contains("encoded.images[1]", await Reject(new ClassifyRequest
        {
            Encoded = new EncodedImages { Images = { Google.Protobuf.ByteString.CopyFrom(Images.Png(64, 64, 1)), Google.Protobuf.ByteString.CopyFromUtf8("not an image") } },
        }));
        Assert.Contains("empty", await Reject(new ClassifyRequest { Encoded = new EncodedImages() }));
    }

    [Fact]
    public async Task ClassifyStream_BadRequest_GetsErrorAndStreamKeepsServing()
    {
        await using ClassifyStreamSession stream = _server.Client.OpenStream(TestServer.Timeout);

        var bad = await Assert.ThrowsAsync<RpcException>(() => stream.ClassifyAsync(new ClassifyRequest { RequestId = "bad" })).WaitAsync(TestServer.Timeout);
        ClassifyResponse good = await stream.ClassifyAsync(new ClassifyRequest
        {
            RequestId = "good",
            Tensor = Tensors.UInt8(Images.RandomPixels(Size * Size, 5), 1, Size, Size),
        }).WaitAsync(TestServer.Timeout);

        Assert.Equal(StatusCode.InvalidArgument, bad.StatusCode);
        Assert.Equal("good", good.RequestId);
        Assert.Single(good.Predictions);
    }
}
