using Google.Protobuf;
using XRay.Client;
using XRay.Contracts.Inference;
using XRay.Contracts.V1;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>
/// The real default model served through a real Kestrel: the Open Inference Protocol gives the very numbers xray.v1
/// gives for the same images, in every input form.
/// </summary>
public sealed class InferenceProtocolEndToEndTests : IAsyncLifetime
{
    private const int Size = 224;
    private TestServer _server = null!;
    private string _model = "";
    private int _channels;

    public async Task InitializeAsync()
    {
        _server = await TestServer.StartAsync();
        _model = _server.Host.Current!.Manifest.Name;
        _channels = _server.Host.Current!.Manifest.Preprocessing.Channels;
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task ModelInfer_SameImagesAsClassify_GiveIdenticalLogitsAndProbabilities()
    {
        byte[] png1 = Images.Png(320, 280, seed: 1), png2 = Images.Png(224, 240, seed: 2);
        byte[] gray = Images.RandomPixels(Size * Size, seed: 3);
        byte[] colour = Images.RandomPixels(3 * Size * Size, seed: 4);
        float[] floats = Images.RandomNormalised(_channels * Size * Size, seed: 5);
        (ClassifyRequest Native, ModelInferRequest Inferred)[] cases =
        [
            (new() { Encoded = new EncodedImages { Images = { ByteString.CopyFrom(png1) } } }, OpenInference.Encoded(_model, [png1], "png")),
            (new() { Encoded = new EncodedImages { Images = { ByteString.CopyFrom(png2) } } }, OpenInference.Encoded(_model, [png2], "png2")),
            (new() { Tensor = Tensors.UInt8(gray, 1, 1, Size, Size) }, OpenInference.UInt8(_model, gray, [1, 1, Size, Size], "gray")),
            (new() { Tensor = Tensors.UInt8(colour, 1, 3, Size, Size) }, OpenInference.UInt8(_model, colour, [1, 3, Size, Size], "colour")),
            (new() { Tensor = Tensors.Float32(floats, 1, _channels, Size, Size) }, OpenInference.Float32(_model, floats, [1, _channels, Size, Size], "fp32")),
        ];

        foreach ((ClassifyRequest native, ModelInferRequest inferred) in cases)
        {
            // One request at a time on an idle server: each runs alone in a batch of one, both ways.
            ClassifyResponse expected = await _server.Client.ClassifyAsync(native).WaitAsync(TestServer.Timeout);
            ModelInferResponse actual = await _server.Client.InferAsync(inferred).WaitAsync(TestServer.Timeout);

            Assert.Equal(inferred.Id, actual.Id);
            Assert.Equal((expected.ModelName, expected.ModelVersion), (actual.ModelName, actual.ModelVersion));
            Assert.Equal(expected.Predictions[0].Logits, OpenInference.Output(actual, OpenInference.LogitsOutput));
            Assert.Equal(expected.Predictions[0].Probabilities, OpenInference.Output(actual, OpenInference.ProbabilitiesOutput));
            ClassifyResponse converted = OpenInference.ToClassifyResponse(actual);
            Assert.Equal(expected.Predictions[0].Probabilities, converted.Predictions[0].Probabilities);
            Assert.Equal(1, converted.Predictions[0].Timing.BatchSize);
        }
    }

    [Fact]
    public async Task ModelStreamInfer_AnswersAsModelInferDoes()
    {
        byte[] png = Images.Png(300, 300, seed: 9);
        ModelInferResponse unary = await _server.Client.InferAsync(OpenInference.Encoded(_model, [png], "u")).WaitAsync(TestServer.Timeout);
        ModelInferResponse streamed;
        await using (InferenceStreamSession stream = _server.Client.OpenInferenceStream(TestServer.Timeout))
        {
            streamed = await stream.InferAsync(OpenInference.Encoded(_model, [png], "s")).WaitAsync(TestServer.Timeout);
        }

        Assert.Equal("s", streamed.Id);
        Assert.Equal(OpenInference.Output(unary, OpenInference.LogitsOutput), OpenInference.Output(streamed, OpenInference.LogitsOutput));
        Assert.Equal(OpenInference.Output(unary, OpenInference.ProbabilitiesOutput), OpenInference.Output(streamed, OpenInference.ProbabilitiesOutput));
    }
}
