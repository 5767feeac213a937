using Grpc.Core;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Model;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>
/// A checkpoint whose network takes one gray channel (resnet18_cntk_gray, 0..255 input) served through a real Kestrel:
/// every accepted input form reaches the network as the in-process preprocessing makes it, and 3-channel normalised
/// floats, which cannot be reduced to one channel, are refused precisely.
/// </summary>
public sealed class GrayModelEndToEndTests : IAsyncLifetime
{
    private const int Size = 224;
    private readonly string _directory = Directory.CreateTempSubdirectory("xray-gray-model-").FullName;
    private TestServer _server = null!;
    private ModelRunner _reference = null!;
    private ImagePreprocessor _preprocessor = null!;

    public async Task InitializeAsync()
    {
        var manifest = new ModelManifest
        {
            Name = "gray-test",
            Version = "0.1.0",
            Architecture = Architectures.ResNet18CntkGray,
            ClassNames = ["a", "b", "c"],
            Preprocessing = Architectures.DefaultPreprocessing(Architectures.ResNet18CntkGray),
        };
        TorchSharp.torch.manual_seed(4);
        using (var network = Architectures.Create(Architectures.ResNet18CntkGray, 3))
        {
            Checkpoint.Save(_directory, manifest, network);
        }

        _server = await TestServer.StartAsync(factory: null, waitUntilServing: true, $"--Model:Path={_directory}", "--Model:Warmup=none");
        _reference = new ModelRunner(Checkpoint.Load(_directory), new RunnerOptions { Device = "cpu" });
        _preprocessor = new ImagePreprocessor(manifest.Preprocessing);
    }

    public async Task DisposeAsync()
    {
        _reference.Dispose();
        await _server.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    private async Task AssertServedAsExpected(float[] preprocessed, Prediction prediction) =>
        Predictions.AssertMatches(await _reference.RunAsync(preprocessed, 1).WaitAsync(TestServer.Timeout), prediction, relativeTolerance: 1e-4f);

    [Fact]
    public async Task Uint8GrayAndColourTensors_AndPng_AreServedThroughTheOneChannelPreprocessing()
    {
        byte[] gray = Images.RandomPixels(Size * Size, seed: 1);
        var expected = new float[_preprocessor.OutputLength];
        Assert.Equal(Size * Size, expected.Length);
        _preprocessor.NormalizeUInt8(gray, 1, expected);
        var response = await _server.Client.ClassifyTensorAsync(gray, [1, Size, Size]).WaitAsync(TestServer.Timeout);
        await AssertServedAsExpected(expected, response.Predictions[0]);

        byte[] colour = Images.RandomPixels(3 * Size * Size, seed: 2);
        _preprocessor.NormalizeUInt8(colour, 3, expected);
        response = await _server.Client.ClassifyTensorAsync(colour, [3, Size, Size]).WaitAsync(TestServer.Timeout);
        await AssertServedAsExpected(expected, response.Predictions[0]);

        byte[] png = Images.Png(300, 260, seed: 3);
        _preprocessor.Decode(png, expected);
        response = await _server.Client.ClassifyAsync(new ClassifyRequest
        {
            Encoded = new EncodedImages { Images = { Google.Protobuf.ByteString.CopyFrom(png) } },
        }).WaitAsync(TestServer.Timeout);
        await AssertServedAsExpected(expected, response.Predictions[0]);
    }

    [Fact]
    public async Task Float32_OneChannelIsServed_ThreeChannelsAreRefusedNamingTheModelsInput()
    {
        float[] one = Images.RandomNormalised(Size * Size, seed: 4).Select(v => 128 + 40 * v).ToArray();
        var response = await _server.Client.ClassifyAsync(new ClassifyRequest { Tensor = Tensors.Float32(one, 1, Size, Size) }).WaitAsync(TestServer.Timeout);
        await AssertServedAsExpected(one, response.Predictions[0]);

        var three = new float[3 * Size * Size];
        var error = await Assert.ThrowsAsync<RpcException>(() => _server.Client.ClassifyAsync(new ClassifyRequest { Tensor = Tensors.Float32(three, 3, Size, Size) }))
            .WaitAsync(TestServer.Timeout);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains("takes normalised float32 tensors with C = 1 (gray)", error.Status.Detail);

        var info = await _server.Stub.GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync.WaitAsync(TestServer.Timeout);
        Assert.Equal(Architectures.ResNet18CntkGray, info.Architecture);
        Assert.Equal("grayscale", info.Preprocessing.Color);
        Assert.DoesNotContain(info.Inputs, i => i.Dtype == DataType.Float32 && i.Shape.Count >= 3 && i.Shape[^3] == 3);
        Assert.Contains(info.Inputs, i => i.Dtype == DataType.Uint8 && i.Shape.Count == 3 && i.Shape[0] == 3);
    }
}
