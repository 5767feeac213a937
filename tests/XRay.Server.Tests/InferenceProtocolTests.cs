using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.HealthCheck;
using Microsoft.Extensions.DependencyInjection;
using XRay.Client;
using XRay.Contracts.Inference;
using XRay.Contracts.V1;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests;

/// <summary>
/// The Open Inference Protocol (KServe v2 gRPC) through a real Kestrel with a client generated from the protocol's
/// proto, on a fake model: every RPC, every input form against xray.v1's answer for the same data, precise refusals,
/// a batch mixing both APIs, statistics, metrics and security.
/// </summary>
public sealed class InferenceProtocolTests
{
    private static readonly TimeSpan Timeout = TestServer.Timeout;
    private const string Model = "fake";
    private const int Classes = 14;

    private static GRPCInferenceService.GRPCInferenceServiceClient Inference(TestServer server) => new(server.Channel);

    private static CallOptions Bounded => new(deadline: DateTime.UtcNow + Timeout);

    private static ModelInferRequest Raw(string datatype, long[] shape, byte[] data, string id = "k") => new()
    {
        ModelName = Model,
        Id = id,
        Inputs = { new ModelInferRequest.Types.InferInputTensor { Name = "images", Datatype = datatype, Shape = { shape } } },
        RawInputContents = { ByteString.CopyFrom(data) },
    };

    private static ModelInferRequest WithContents(string datatype, long[] shape, InferTensorContents contents, string id = "k") => new()
    {
        ModelName = Model,
        Id = id,
        Inputs = { new ModelInferRequest.Types.InferInputTensor { Name = "images", Datatype = datatype, Shape = { shape }, Contents = contents } },
    };

    private static byte[] LengthPrefixed(params byte[][] elements)
    {
        var bytes = new List<byte>();
        foreach (byte[] element in elements)
        {
            var length = new byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(length, (uint)element.Length);
            bytes.AddRange(length);
            bytes.AddRange(element);
        }
        return [.. bytes];
    }

    private static void AssertSameAsClassify(ClassifyResponse native, ModelInferResponse inferred, string id)
    {
        Assert.Equal(id, inferred.Id);
        Assert.Equal(Model, inferred.ModelName);
        Assert.Equal("1.0.0", inferred.ModelVersion);
        Assert.Equal(["logits", "probabilities"], inferred.Outputs.Select(output => output.Name));
        Assert.All(inferred.Outputs, output =>
        {
            Assert.Equal("FP32", output.Datatype);
            Assert.Equal([native.Predictions.Count, Classes], output.Shape);
        });
        Assert.Equal(2, inferred.RawOutputContents.Count);
        // Bit for bit: the same decoding, batcher and prediction code produced both.
        Assert.Equal(native.Predictions.SelectMany(p => p.Logits), OpenInference.Output(inferred, "logits"));
        Assert.Equal(native.Predictions.SelectMany(p => p.Probabilities), OpenInference.Output(inferred, "probabilities"));
    }

    [Fact]
    public async Task HealthMetadataAndConfig_DescribeTheServedModel()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()), waitUntilServing: true,
            "--Batching:MaxBatchSize=8", "--Batching:ModelInstances=2");
        var client = Inference(server);

        Assert.True((await client.ServerLiveAsync(new ServerLiveRequest(), Bounded)).Live);
        Assert.True((await client.ServerReadyAsync(new ServerReadyRequest(), Bounded)).Ready);
        Assert.True((await client.ModelReadyAsync(new ModelReadyRequest { Name = Model }, Bounded)).Ready);
        Assert.True((await client.ModelReadyAsync(new ModelReadyRequest { Name = Model, Version = "1.0.0" }, Bounded)).Ready);

        ServerMetadataResponse server_ = await client.ServerMetadataAsync(new ServerMetadataRequest(), Bounded);
        Assert.Equal("xray-server", server_.Name);
        Assert.False(string.IsNullOrEmpty(server_.Version));
        Assert.Equal(["model_configuration", "statistics"], server_.Extensions);

        ModelMetadataResponse metadata = await client.ModelMetadataAsync(new ModelMetadataRequest { Name = Model }, Bounded);
        Assert.Equal(Model, metadata.Name);
        Assert.Equal(["1.0.0"], metadata.Versions);
        Assert.Equal("fake", metadata.Platform);
        var input = Assert.Single(metadata.Inputs);
        Assert.Equal(("images", "FP32"), (input.Name, input.Datatype));
        Assert.Equal([-1L, 3, 224, 224], input.Shape);
        Assert.Equal(["logits", "probabilities"], metadata.Outputs.Select(output => output.Name));
        Assert.All(metadata.Outputs, output => Assert.Equal([-1L, Classes], output.Shape));

        ModelConfig config = (await client.ModelConfigAsync(new ModelConfigRequest { Name = Model }, Bounded)).Config;
        Assert.Equal(Model, config.Name);
        Assert.Equal(8, config.MaxBatchSize);
        Assert.Equal([3L, 224, 224], Assert.Single(config.Input).Dims);
        Assert.Equal(ModelInput.Types.Format.Nchw, config.Input[0].Format);
        Assert.Equal(2, Assert.Single(config.InstanceGroup).Count);
        Assert.Equal(ModelInstanceGroup.Types.Kind.Cpu, config.InstanceGroup[0].Kind);
        Assert.NotNull(config.DynamicBatching);
        Assert.Equal(string.Join(",", XRay.Model.ChestXrayFindings.Nih14.Take(Classes)), config.Parameters["class_names"].StringValue);

        // Another model, or another version of this one, is not found; so says every per-model call.
        var unknown = await Assert.ThrowsAsync<RpcException>(() => client.ModelMetadataAsync(new ModelMetadataRequest { Name = "densenet" }, Bounded).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Contains("'densenet'", unknown.Status.Detail);
        Assert.Equal(StatusCode.NotFound, await StatusOf(client.ModelReadyAsync(new ModelReadyRequest { Name = Model, Version = "2" }, Bounded).ResponseAsync));
        Assert.Equal(StatusCode.NotFound, await StatusOf(client.ModelConfigAsync(new ModelConfigRequest { Name = "" }, Bounded).ResponseAsync));
        Assert.Equal(StatusCode.NotFound, await StatusOf(client.ModelStatisticsAsync(new ModelStatisticsRequest { Name = "other" }, Bounded).ResponseAsync));
    }

    [Fact]
    public async Task Readiness_FollowsHealth_NotReadyWhileLoadingAndWhileNotServing()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()) { LoadGate = gate }, waitUntilServing: false);
        var client = Inference(server);

        bool liveWhileLoading = (await client.ServerLiveAsync(new ServerLiveRequest(), Bounded)).Live;
        bool readyWhileLoading = (await client.ServerReadyAsync(new ServerReadyRequest(), Bounded)).Ready;
        bool modelReadyWhileLoading = (await client.ModelReadyAsync(new ModelReadyRequest { Name = Model }, Bounded)).Ready;
        StatusCode inferWhileLoading = await StatusOf(client.ModelInferAsync(Raw("UINT8", [1, 1, 224, 224], new byte[224 * 224]), Bounded).ResponseAsync);
        StatusCode metadataWhileLoading = await StatusOf(client.ModelMetadataAsync(new ModelMetadataRequest { Name = Model }, Bounded).ResponseAsync);
        gate.SetResult();
        await server.WaitForHealthAsync(HealthCheckResponse.Types.ServingStatus.Serving);
        bool readyWhenServing = (await client.ServerReadyAsync(new ServerReadyRequest(), Bounded)).Ready;

        // The state a draining server is in: health NOT_SERVING (set by the model host when stopping begins).
        server.App.Services.GetRequiredService<HealthServiceImpl>().SetStatus("", HealthCheckResponse.Types.ServingStatus.NotServing);
        bool readyWhenNotServing = (await client.ServerReadyAsync(new ServerReadyRequest(), Bounded)).Ready;
        bool modelReadyWhenNotServing = (await client.ModelReadyAsync(new ModelReadyRequest { Name = Model }, Bounded)).Ready;

        Assert.True(liveWhileLoading);
        Assert.False(readyWhileLoading);
        Assert.False(modelReadyWhileLoading);
        Assert.Equal(StatusCode.Unavailable, inferWhileLoading);
        Assert.Equal(StatusCode.Unavailable, metadataWhileLoading);
        Assert.True(readyWhenServing);
        Assert.False(readyWhenNotServing);
        Assert.False(modelReadyWhenNotServing);
    }

    [Fact]
    public async Task ModelInfer_EveryInputForm_AnswersExactlyAsClassifyDoes()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));
        var client = Inference(server);
        const int Pixels = 224 * 224;
        float[] floats = Images.RandomNormalised(2 * 3 * Pixels, seed: 1);
        byte[] gray = Images.RandomPixels(2 * Pixels, seed: 2);
        byte[] colour = Images.RandomPixels(3 * Pixels, seed: 3);
        byte[] png1 = Images.Png(300, 260, seed: 4), png2 = Images.Png(224, 224, seed: 5);
        byte[] floatBytes = MemoryMarshal.AsBytes(floats.AsSpan()).ToArray();

        var fp32Contents = new InferTensorContents();
        fp32Contents.Fp32Contents.Add(floats);
        var uint8Contents = new InferTensorContents();
        uint8Contents.UintContents.Add(gray.Select(b => (uint)b));
        var bytesContents = new InferTensorContents();
        bytesContents.BytesContents.Add([ByteString.CopyFrom(png1), ByteString.CopyFrom(png2)]);

        (string Name, ClassifyRequest Native, ModelInferRequest Inferred)[] cases =
        [
            ("fp32 raw", new() { Tensor = Tensors.Float32(floats, 2, 3, 224, 224) }, Raw("FP32", [2, 3, 224, 224], floatBytes, "fp32-raw")),
            ("fp32 contents", new() { Tensor = Tensors.Float32(floats, 2, 3, 224, 224) }, WithContents("FP32", [2, 3, 224, 224], fp32Contents, "fp32-contents")),
            ("uint8 gray raw", new() { Tensor = Tensors.UInt8(gray, 2, 1, 224, 224) }, Raw("UINT8", [2, 1, 224, 224], gray, "uint8-raw")),
            ("uint8 colour raw", new() { Tensor = Tensors.UInt8(colour, 1, 3, 224, 224) }, Raw("UINT8", [1, 3, 224, 224], colour, "uint8-colour")),
            ("uint8 contents", new() { Tensor = Tensors.UInt8(gray, 2, 1, 224, 224) }, WithContents("UINT8", [2, 1, 224, 224], uint8Contents, "uint8-contents")),
            ("bytes raw", new() { Encoded = new EncodedImages { Images = { ByteString.CopyFrom(png1), ByteString.CopyFrom(png2) } } },
                Raw("BYTES", [2], LengthPrefixed(png1, png2), "bytes-raw")),
            ("bytes contents", new() { Encoded = new EncodedImages { Images = { ByteString.CopyFrom(png1), ByteString.CopyFrom(png2) } } },
                WithContents("BYTES", [2, 1], bytesContents, "bytes-contents")),
        ];
        foreach ((string name, ClassifyRequest native, ModelInferRequest inferred) in cases)
        {
            ClassifyResponse expected = await server.Client.ClassifyAsync(native).WaitAsync(Timeout);
            ModelInferResponse actual = await client.ModelInferAsync(inferred, Bounded);
            try
            {
                AssertSameAsClassify(expected, actual, inferred.Id);
            }
            catch (Exception ex)
            {
                throw new Xunit.Sdk.XunitException($"{name}: {ex.Message}");
            }
        }
    }

    [Fact]
    public async Task ModelInfer_RequestedOutputs_ComeInContentsWhenAskedAndOnlyThose()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));
        var client = Inference(server);
        byte[] pixels = Images.RandomPixels(224 * 224, seed: 7);
        ClassifyResponse native = await server.Client.ClassifyTensorAsync(pixels, [1, 224, 224]).WaitAsync(Timeout);
        ModelInferRequest request = Raw("UINT8", [1, 1, 224, 224], pixels);
        request.Outputs.Add(new ModelInferRequest.Types.InferRequestedOutputTensor
        {
            Name = "probabilities",
            Parameters = { ["binary_data"] = new InferParameter { BoolParam = false } },
        });

        ModelInferResponse response = await client.ModelInferAsync(request, Bounded);

        var output = Assert.Single(response.Outputs);
        Assert.Equal("probabilities", output.Name);
        Assert.Empty(response.RawOutputContents);
        Assert.Equal(native.Predictions[0].Probabilities, output.Contents.Fp32Contents);
        Assert.Equal(1, response.Parameters["batch_size"].Int64Param);
    }

    [Fact]
    public async Task ModelInfer_BadRequests_AreRefusedWithPreciseStatuses_AndNothingIsComputed()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), waitUntilServing: true, "--Batching:MaxQueueSize=64");
        var client = Inference(server);
        byte[] image = new byte[224 * 224];

        ModelInferRequest With(Action<ModelInferRequest> change)
        {
            ModelInferRequest request = Raw("UINT8", [1, 1, 224, 224], image);
            change(request);
            return request;
        }

        var bothContents = new InferTensorContents();
        bothContents.UintContents.Add(image.Select(b => (uint)b));
        var tooLarge = new InferTensorContents();
        tooLarge.UintContents.Add(Enumerable.Repeat(256u, 224 * 224));
        var mixedFields = new InferTensorContents();
        mixedFields.UintContents.Add(image.Select(b => (uint)b));
        mixedFields.Fp32Contents.Add(1f);
        float[] huge = Enumerable.Repeat(1e30f, 3 * 224 * 224).ToArray();

        (string Name, ModelInferRequest Request, StatusCode Code, string Detail)[] cases =
        [
            ("unknown model", With(r => r.ModelName = "densenet"), StatusCode.NotFound, "'densenet' is not served here"),
            ("unknown version", With(r => r.ModelVersion = "9"), StatusCode.NotFound, "no version '9'"),
            ("wrong shape", With(r => r.Inputs[0].Shape[2] = 200), StatusCode.InvalidArgument, "shape [1,1,200,224] is not accepted"),
            ("rank 3", With(r => r.Inputs[0].Shape.RemoveAt(0)), StatusCode.InvalidArgument, "expected [N,C,224,224]"),
            ("two channels", With(r => r.Inputs[0].Shape[1] = 2), StatusCode.InvalidArgument, "C = 1 or 3"),
            ("datatype", With(r => r.Inputs[0].Datatype = "INT32"), StatusCode.InvalidArgument, "datatype 'INT32' is not accepted"),
            ("byte count", With(r => r.RawInputContents[0] = ByteString.CopyFrom(new byte[100])), StatusCode.InvalidArgument, "has 100 bytes; shape [1,1,224,224] of UINT8 needs 50176"),
            ("both contents", With(r => r.Inputs[0].Contents = bothContents), StatusCode.InvalidArgument, "both contents and raw_input_contents"),
            ("no data", With(r => r.RawInputContents.Clear()), StatusCode.InvalidArgument, "has no data"),
            ("two inputs", With(r => r.Inputs.Add(r.Inputs[0].Clone())), StatusCode.InvalidArgument, "has 2 inputs"),
            ("input name", With(r => r.Inputs[0].Name = "INPUT__0"), StatusCode.InvalidArgument, "'INPUT__0'; this model's input is images"),
            ("unknown output", With(r => r.Outputs.Add(new ModelInferRequest.Types.InferRequestedOutputTensor { Name = "boxes" })), StatusCode.InvalidArgument, "'boxes' is not an output"),
            ("unknown parameter", With(r => r.Parameters.Add("sequence_id", new InferParameter { Int64Param = 3 })), StatusCode.InvalidArgument, "parameters['sequence_id'] is not a parameter"),
            ("timeout type", With(r => r.Parameters.Add("timeout", new InferParameter { StringParam = "1s" })), StatusCode.InvalidArgument, "int64_param"),
            ("uint8 over 255", With(r => { r.RawInputContents.Clear(); r.Inputs[0].Contents = tooLarge; }), StatusCode.InvalidArgument, "uint_contents[0] is 256"),
            ("values in another field", With(r => { r.RawInputContents.Clear(); r.Inputs[0].Contents = mixedFields; }), StatusCode.InvalidArgument, "values outside uint_contents"),
            ("fp32 out of range", Raw("FP32", [1, 3, 224, 224], MemoryMarshal.AsBytes(huge.AsSpan()).ToArray()), StatusCode.InvalidArgument, "inputs[images] holds"),
            ("fp32 channels", Raw("FP32", [1, 1, 224, 224], new byte[4 * 224 * 224]), StatusCode.InvalidArgument, "C = 3"),
            ("not an image", Raw("BYTES", [1], LengthPrefixed([1, 2, 3])), StatusCode.InvalidArgument, "inputs[images] element[0]"),
            ("bytes count", Raw("BYTES", [2], LengthPrefixed([1, 2, 3])), StatusCode.InvalidArgument, "holds 1 elements; shape [2] needs 2"),
            ("bytes length", Raw("BYTES", [1], [9, 0, 0, 0, 1]), StatusCode.InvalidArgument, "says 9 bytes but 1 remain"),
            ("too many images", Raw("UINT8", [65, 1, 224, 224], new byte[65 * 224 * 224]), StatusCode.InvalidArgument, "65 images; at most 64"),
            ("id too long", With(r => r.Id = new string('x', 300)), StatusCode.InvalidArgument, "id has 300 characters"),
        ];
        foreach ((string name, ModelInferRequest request, StatusCode code, string detail) in cases)
        {
            var error = await Assert.ThrowsAsync<RpcException>(() => client.ModelInferAsync(request, Bounded).ResponseAsync).WaitAsync(Timeout);
            Assert.True(error.StatusCode == code && error.Status.Detail.Contains(detail, StringComparison.Ordinal),
                $"{name}: {error.StatusCode} {error.Status.Detail}");
        }

        // A message that is not protobuf at all.
        var bytes = Marshallers.Create<byte[]>(b => b, b => b);
        var method = new Method<byte[], byte[]>(MethodType.Unary, "inference.GRPCInferenceService", "ModelInfer", bytes, bytes);
        var malformed = await Assert.ThrowsAsync<RpcException>(() =>
            server.Channel.CreateCallInvoker().AsyncUnaryCall(method, null, Bounded, [0xFF, 0xFF, 0xFF]).ResponseAsync).WaitAsync(Timeout);
        Assert.Equal(StatusCode.InvalidArgument, malformed.StatusCode);
        Assert.Contains("not a valid ModelInferRequest", malformed.Status.Detail);
        Assert.Equal(0, backend.ImagesComputed);
    }

    [Fact]
    public async Task ModelInfer_TimeoutParameter_ExpiresWhileQueued_DeadlineExceededAndNeverComputed()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        var client = Inference(server);
        Task<ClassifyResponse> running;
        StatusCode timedOut;
        using (Held(backend))
        {
            Task<int> first = NextBatchStarted(backend);
            running = server.Client.ClassifyAsync(Request(0));
            await first.WaitAsync(Timeout);
            ModelInferRequest request = Raw("UINT8", [1, 1, 224, 224], new byte[224 * 224]);
            request.Parameters.Add("timeout", new InferParameter { Int64Param = 2_000 });
            request.Parameters.Add("priority", new InferParameter { Uint64Param = 1 });
            timedOut = await StatusOf(client.ModelInferAsync(request, Bounded).ResponseAsync);
        }
        await running.WaitAsync(Timeout);

        Assert.Equal(StatusCode.DeadlineExceeded, timedOut);
        Assert.Equal(1, backend.ImagesComputed);
    }

    [Fact]
    public async Task ModelStreamInfer_AnswersEveryRequest_FailuresInBand_StreamStaysOpen()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));
        byte[] a = Images.RandomPixels(224 * 224, seed: 11), b = Images.RandomPixels(224 * 224, seed: 12);
        ClassifyResponse nativeA = await server.Client.ClassifyTensorAsync(a, [1, 224, 224]).WaitAsync(Timeout);
        ClassifyResponse nativeB = await server.Client.ClassifyTensorAsync(b, [1, 224, 224]).WaitAsync(Timeout);
        using var call = Inference(server).ModelStreamInfer(Bounded);

        await call.RequestStream.WriteAsync(Raw("UINT8", [1, 1, 224, 224], a, "a"));
        await call.RequestStream.WriteAsync(Raw("UINT8", [1, 1, 200, 224], a, "bad"));
        await call.RequestStream.WriteAsync(Raw("UINT8", [1, 1, 224, 224], b, "b"));
        await call.RequestStream.CompleteAsync();
        var responses = new Dictionary<string, ModelStreamInferResponse>();
        await foreach (ModelStreamInferResponse response in call.ResponseStream.ReadAllAsync().WithCancellation(new CancellationTokenSource(Timeout).Token))
        {
            responses.Add(response.InferResponse.Id, response);
        }

        Assert.Equal(["a", "b", "bad"], responses.Keys.Order());
        Assert.StartsWith("INVALID_ARGUMENT: inputs[images].shape [1,1,200,224]", responses["bad"].ErrorMessage);
        Assert.Equal(Model, responses["bad"].InferResponse.ModelName);
        Assert.Empty(responses["a"].ErrorMessage);
        AssertSameAsClassify(nativeA, responses["a"].InferResponse, "a");
        AssertSameAsClassify(nativeB, responses["b"].InferResponse, "b");
    }

    [Fact]
    public async Task ModelStreamInfer_OnStop_AnswersItsInFlightRequest_AndEndsUnavailableWithinTheBound()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        var client = Inference(server);
        using var busy = client.ModelStreamInfer();
        using var idle = client.ModelStreamInfer();

        async Task<(List<string> Answered, StatusCode Status)> ReadToEndAsync(AsyncDuplexStreamingCall<ModelInferRequest, ModelStreamInferResponse> stream)
        {
            var answered = new List<string>();
            try
            {
                while (await stream.ResponseStream.MoveNext())
                {
                    var response = stream.ResponseStream.Current;
                    answered.Add(response.ErrorMessage.Length == 0 ? response.InferResponse.Id : $"{response.InferResponse.Id}: {response.ErrorMessage}");
                }
                return (answered, StatusCode.OK);
            }
            catch (RpcException ex)
            {
                return (answered, ex.StatusCode);
            }
        }

        Task stopped;
        Task<(List<string> Answered, StatusCode Status)>[] endings;
        using (Held(backend))
        {
            Task<int> started = NextBatchStarted(backend);
            await busy.RequestStream.WriteAsync(Raw("UINT8", [1, 1, 224, 224], new byte[224 * 224], "in-flight"));
            await started.WaitAsync(Timeout);
            endings = [ReadToEndAsync(busy), ReadToEndAsync(idle)];
            using TestServer.HealthWatch watch = server.WatchHealth();
            await watch.UntilAsync(HealthCheckResponse.Types.ServingStatus.Serving);
            stopped = server.App.StopAsync();
            await watch.UntilAsync(HealthCheckResponse.Types.ServingStatus.NotServing);
        }
        // Well inside the host's 30 s shutdown timeout: open streams do not hold stopping.
        await stopped.WaitAsync(TimeSpan.FromSeconds(10));
        var ended = await Task.WhenAll(endings).WaitAsync(Timeout);

        Assert.Equal(["in-flight"], ended[0].Answered);
        Assert.Empty(ended[1].Answered);
        // UNAVAILABLE as the server ends them; a stream whose client never half-closes can rarely see Kestrel's graceful
        // close (GOAWAY NO_ERROR) first, as INTERNAL (see ShutdownWithOpenStreamsTests).
        Assert.All(ended, ending => Assert.Contains(ending.Status, new[] { StatusCode.Unavailable, StatusCode.Internal }));
        Assert.Contains(ended, ending => ending.Status == StatusCode.Unavailable);
    }

    [Fact]
    public async Task ModelStreamInfer_OnStop_WhileClientsKeepWritingOnOneChannel_AnswersOrRefusesEveryWrittenRequest()
    {
        const int Streams = 4;
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        var client = Inference(server);
        // One channel, so one HTTP/2 connection: one stream's end reaching the connection would reach the others.
        var calls = Enumerable.Range(0, Streams).Select(_ => client.ModelStreamInfer(Bounded)).ToArray();
        var written = Enumerable.Range(0, Streams).Select(_ => new List<string>()).ToArray();
        var answers = Enumerable.Range(0, Streams).Select(_ => new Dictionary<string, string>()).ToArray();
        var refused = Enumerable.Range(0, Streams).Select(_ => new CancellationTokenSource()).ToArray();

        async Task<StatusCode> ReadToEndAsync(int i)
        {
            try
            {
                while (await calls[i].ResponseStream.MoveNext())
                {
                    var response = calls[i].ResponseStream.Current;
                    Assert.True(answers[i].TryAdd(response.InferResponse.Id, response.ErrorMessage), $"{response.InferResponse.Id} answered twice");
                    if (response.ErrorMessage.StartsWith("UNAVAILABLE", StringComparison.Ordinal)) refused[i].Cancel();
                }
                return StatusCode.OK;
            }
            catch (RpcException ex)
            {
                return ex.StatusCode;
            }
            finally
            {
                refused[i].Cancel();
            }
        }

        // Writes back to back until the server's refusal is read, then half-closes.
        async Task WriteUntilRefusedAsync(int i)
        {
            try
            {
                for (int n = 0; !refused[i].IsCancellationRequested; n++)
                {
                    string id = $"s{i}-{n}";
                    await calls[i].RequestStream.WriteAsync(Raw("UINT8", [1, 1, 224, 224], new byte[224 * 224], id));
                    written[i].Add(id);
                }
                await calls[i].RequestStream.CompleteAsync();
            }
            catch (Exception ex) when (ex is RpcException or InvalidOperationException or OperationCanceledException)
            {
                // The call ended under the write: that request was not written.
            }
        }

        Task stopped;
        Task<StatusCode>[] endings;
        Task[] writing;
        try
        {
            using (Held(backend))
            {
                Task<int> started = NextBatchStarted(backend);
                for (int i = 0; i < Streams; i++)
                {
                    await calls[i].RequestStream.WriteAsync(Raw("UINT8", [1, 1, 224, 224], new byte[224 * 224], $"held{i}"));
                }
                await started.WaitAsync(Timeout);
                await WaitUntilAsync(() => backend.BatchSizes.Sum() + server.Host.Current!.Batcher.QueuedItems == Streams,
                    "every stream's request is in a batch or queued");
                endings = Enumerable.Range(0, Streams).Select(ReadToEndAsync).ToArray();
                writing = Enumerable.Range(0, Streams).Select(WriteUntilRefusedAsync).ToArray();
                using TestServer.HealthWatch watch = server.WatchHealth();
                stopped = server.App.StopAsync();
                await watch.UntilAsync(HealthCheckResponse.Types.ServingStatus.NotServing);
            }
            await stopped.WaitAsync(TimeSpan.FromSeconds(10));
            StatusCode[] statuses = await Task.WhenAll(endings).WaitAsync(Timeout);
            await Task.WhenAll(writing).WaitAsync(Timeout);

            for (int i = 0; i < Streams; i++)
            {
                Assert.Equal(StatusCode.Unavailable, statuses[i]);
                Assert.Equal("", answers[i][$"held{i}"]);
                Assert.All(written[i], id => Assert.True(answers[i].ContainsKey(id), $"{id} was written and never answered"));
                Assert.All(answers[i].Values, error => Assert.True(error.Length == 0 || error.StartsWith("UNAVAILABLE: ", StringComparison.Ordinal), error));
                Assert.Contains(answers[i].Values, error => error.Length > 0);
            }
        }
        finally
        {
            foreach (var call in calls) call.Dispose();
        }
    }

    [Fact]
    public async Task OneBatch_MixesXrayAndInferenceProtocolRequests()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        var client = Inference(server);
        byte[] pixels = Images.RandomPixels(224 * 224, seed: 21);
        Task<ClassifyResponse> native;
        Task<ModelInferResponse> inferred;
        Task<ClassifyResponse> first;
        using (Held(backend))
        {
            Task<int> started = NextBatchStarted(backend);
            first = server.Client.ClassifyAsync(Request(20));
            await started.WaitAsync(Timeout);
            native = server.Client.ClassifyTensorAsync(pixels, [1, 224, 224]);
            inferred = client.ModelInferAsync(Raw("UINT8", [1, 1, 224, 224], pixels, "mixed"), Bounded).ResponseAsync;
            await QueuedImagesBecome(server, 2);
        }
        await first.WaitAsync(Timeout);
        ClassifyResponse nativeResponse = await native.WaitAsync(Timeout);
        ModelInferResponse inferredResponse = await inferred.WaitAsync(Timeout);

        Assert.Equal([1, 2], backend.BatchSizes);
        Assert.Equal(2, nativeResponse.Predictions[0].Timing.BatchSize);
        Assert.Equal(2, inferredResponse.Parameters["batch_size"].Int64Param);
        AssertSameAsClassify(nativeResponse, inferredResponse, "mixed");
    }

    [Fact]
    public async Task Statistics_CountWhatWasServed_AndMetricsAreLabelledByMethod()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));
        var client = Inference(server);
        await client.ModelInferAsync(Raw("UINT8", [2, 1, 224, 224], new byte[2 * 224 * 224]), Bounded);
        await client.ModelInferAsync(Raw("UINT8", [1, 1, 224, 224], new byte[224 * 224]), Bounded);
        await StatusOf(client.ModelInferAsync(Raw("UINT8", [1, 1, 5, 5], new byte[25]), Bounded).ResponseAsync);

        ModelStatisticsResponse response = await client.ModelStatisticsAsync(new ModelStatisticsRequest(), Bounded);
        using var http = new HttpClient();
        string metrics = await http.GetStringAsync($"{server.MetricsAddress}/metrics").WaitAsync(Timeout);

        ModelStatistics statistics = Assert.Single(response.ModelStats);
        Assert.Equal((Model, "1.0.0"), (statistics.Name, statistics.Version));
        Assert.Equal(3ul, statistics.InferenceCount);
        Assert.Equal(2ul, statistics.ExecutionCount);
        Assert.Equal(2ul, statistics.InferenceStats.Success.Count);
        Assert.Equal(1ul, statistics.InferenceStats.Fail.Count);
        Assert.Equal(2ul, statistics.InferenceStats.Queue.Count);
        Assert.Equal(2ul, statistics.InferenceStats.ComputeInfer.Count);
        Assert.True(statistics.InferenceStats.Success.Ns > 0);
        Assert.Equal([1ul, 2ul], statistics.BatchStats.Select(batch => batch.BatchSize));
        Assert.True(statistics.LastInference > (ulong)DateTimeOffset.UtcNow.AddMinutes(-5).ToUnixTimeMilliseconds());
        Assert.Contains("rpc_method=\"inference.GRPCInferenceService/ModelInfer\"", metrics);
        Assert.Contains("rpc_method=\"inference.GRPCInferenceService/ModelStatistics\"", metrics);
    }

    [Fact]
    public async Task ModelInfer_ConnectionShareFull_IsResourceExhausted()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), waitUntilServing: true,
            "--Transport:MaxImagesInFlightPerConnection=2");
        var client = Inference(server);
        Task<ModelInferResponse> holding;
        RpcException refused;
        using (Held(backend))
        {
            Task<int> started = NextBatchStarted(backend);
            holding = client.ModelInferAsync(Raw("UINT8", [2, 1, 224, 224], new byte[2 * 224 * 224]), Bounded).ResponseAsync;
            await started.WaitAsync(Timeout);
            refused = await Assert.ThrowsAsync<RpcException>(() => client.ModelInferAsync(Raw("UINT8", [1, 1, 224, 224], new byte[224 * 224]), Bounded).ResponseAsync)
                .WaitAsync(Timeout);
        }
        await holding.WaitAsync(Timeout);

        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Contains("Transport:MaxImagesInFlightPerConnection", refused.Status.Detail);
    }

    [Fact]
    public async Task Security_PerMethodRoles_ApplyToInference_LivenessAndReadinessStayOpen()
    {
        const string ClassifyKey = "radiology-0123456789abcdef", ViewerKey = "viewer-0123456789abcdef";
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()), waitUntilServing: true,
            "--Security:RequireAuthentication=true",
            "--Security:ApiKeys:0:Name=radiology", $"--Security:ApiKeys:0:Key={ClassifyKey}", "--Security:ApiKeys:0:Roles:0=classify",
            "--Security:ApiKeys:1:Name=viewer", $"--Security:ApiKeys:1:Key={ViewerKey}",
            "--Security:MethodRoles:ModelInfer=classify", "--Security:MethodRoles:ModelStreamInfer=classify");
        XRayClassifierClient Client(string? key) =>
            new(server.Address, new XRayClientOptions { ApiKey = key, MaxAttempts = 1, Timeout = Timeout });
        using var radiology = Client(ClassifyKey);
        using var viewer = Client(ViewerKey);
        using var anonymous = Client(null);
        ModelInferRequest Request() => OpenInference.UInt8(Model, new byte[224 * 224], [1, 1, 224, 224]);

        Assert.True((await anonymous.Inference.ServerLiveAsync(new ServerLiveRequest(), Bounded)).Live);
        Assert.True((await anonymous.Inference.ServerReadyAsync(new ServerReadyRequest(), Bounded)).Ready);
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(anonymous.Inference.ModelMetadataAsync(new ModelMetadataRequest { Name = Model }, Bounded).ResponseAsync));
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(anonymous.InferAsync(Request())));
        Assert.Equal(StatusCode.PermissionDenied, await StatusOf(viewer.InferAsync(Request())));
        Assert.Equal(Model, (await viewer.Inference.ModelMetadataAsync(new ModelMetadataRequest { Name = Model }, Bounded)).Name);
        Assert.Equal(Model, (await radiology.InferAsync(Request()).WaitAsync(Timeout)).ModelName);
        await using (InferenceStreamSession stream = radiology.OpenInferenceStream(Timeout))
        {
            ModelInferResponse streamed = await stream.InferAsync(Request()).WaitAsync(Timeout);
            Assert.Equal(2, streamed.Outputs.Count);
        }
        var denied = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            await using InferenceStreamSession stream = viewer.OpenInferenceStream(Timeout);
            await stream.InferAsync(Request());
        }).WaitAsync(Timeout);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
    }

    [Fact]
    public void MethodRoles_NamingNoMethod_StopsTheServerWithAMessageNamingBothServices()
    {
        var options = new XRay.Server.Hosting.SecurityOptions { MethodRoles = { ["ModelInfer"] = "a", ["Predict"] = "b" } };
        var problems = options.Validate(new System.ComponentModel.DataAnnotations.ValidationContext(options)).ToArray();
        var problem = Assert.Single(problems);
        Assert.Contains("'Predict'", problem.ErrorMessage);
        Assert.Contains("ModelInfer", problem.ErrorMessage);
    }
}
