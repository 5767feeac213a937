using System.Buffers.Binary;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Options;
using SkiaSharp;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Server.Grpc;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>What one request or one caller can cost: admission before decoding, the decode pool, the pixel cap, fair share.</summary>
public class BoundedWorkTests
{
    private static ClassifyRequest EncodedRequest(string id, params byte[][] images)
    {
        var request = new ClassifyRequest { RequestId = id, Encoded = new EncodedImages() };
        foreach (byte[] image in images) request.Encoded.Images.Add(ByteString.CopyFrom(image));
        return request;
    }

    private static ClassifyRequest Constant(string id, byte value)
    {
        var pixels = new byte[Traffic.Size * Traffic.Size];
        Array.Fill(pixels, value);
        return new ClassifyRequest { RequestId = id, Tensor = Tensors.UInt8(pixels, 1, Traffic.Size, Traffic.Size) };
    }

    /// <summary>A JPEG whose start-of-frame claims another size than the pixels behind it.</summary>
    private static byte[] JpegClaiming(ushort width, ushort height)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(64, 48, SKColorType.Gray8, SKAlphaType.Opaque));
        using SKData data = bitmap.Encode(SKEncodedImageFormat.Jpeg, 90);
        byte[] jpeg = data.ToArray();
        for (int i = 2; i + 9 < jpeg.Length; i++)
        {
            if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0)
            {
                BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(i + 5), height);
                BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(i + 7), width);
                return jpeg;
            }
        }
        throw new InvalidOperationException("the encoder wrote no baseline start-of-frame");
    }

    [Fact]
    public async Task Classify_QueueFull_EncodedRequestRefusedBeforeAnyDecode()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend),
            settings: ["--Batching:MaxBatchSize=1", "--Batching:MaxQueueSize=2"]);
        DecodePool pool = server.App.Services.GetRequiredService<DecodePool>();
        using (Traffic.Held(backend))
        {
            Task<int> started = Traffic.NextBatchStarted(backend);
            var running = server.Stub.ClassifyAsync(Traffic.Request(1)).ResponseAsync;
            await started.WaitAsync(TestServer.Timeout);
            var queued = new[] { Traffic.Request(2), Traffic.Request(3) }.Select(r => server.Stub.ClassifyAsync(r).ResponseAsync).ToArray();
            await Traffic.QueuedImagesBecome(server, 2);

            var png = Images.Png(300, 200, seed: 4);
            var refused = await Assert.ThrowsAsync<RpcException>(() => server.Stub.ClassifyAsync(EncodedRequest("png", png)).ResponseAsync)
                .WaitAsync(TestServer.Timeout);

            Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
            Assert.Equal("queue full: 2 of 2 images waiting, request has 1", refused.Status.Detail);
            Assert.Equal(0, pool.Started);
            backend.Release();
            await Task.WhenAll(queued.Append(running)).WaitAsync(TestServer.Timeout);
        }

        // With room again, the same request is decoded and answered.
        var answer = await server.Stub.ClassifyAsync(EncodedRequest("png", Images.Png(300, 200, seed: 4))).ResponseAsync.WaitAsync(TestServer.Timeout);
        Assert.Single(answer.Predictions);
        Assert.Equal(1, pool.Started);
    }

    [Fact]
    public async Task Classify_UndecodableImage_GivesItsQueueRoomBack()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend),
            settings: ["--Batching:MaxBatchSize=2", "--Batching:MaxQueueSize=2"]);
        byte[] truncated = Images.Png(300, 200, seed: 5)[..100];

        var error = await Assert.ThrowsAsync<RpcException>(() => server.Stub.ClassifyAsync(EncodedRequest("bad", Images.Png(300, 200, seed: 6), truncated)).ResponseAsync)
            .WaitAsync(TestServer.Timeout);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.StartsWith("encoded.images[1]: The PNG image (300 x 200) is truncated", error.Status.Detail);
        Assert.Equal(0, server.Host.Current!.Batcher.ReservedItems);
        Assert.Equal(0, backend.ImagesComputed);
        var answer = await server.Stub.ClassifyAsync(Traffic.Request(7, images: 2)).ResponseAsync.WaitAsync(TestServer.Timeout);
        Assert.Equal(2, answer.Predictions.Count);
    }

    [Fact]
    public async Task Classify_HeaderOverThePixelCap_InvalidArgumentNamingTheSize()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));

        var error = await Assert.ThrowsAsync<RpcException>(() => server.Stub.ClassifyAsync(EncodedRequest("huge", JpegClaiming(60000, 60000))).ResponseAsync)
            .WaitAsync(TestServer.Timeout);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("encoded.images[0]: The JPEG image is 60000 x 60000 pixels; at most 25,000,000 pixels are accepted.", error.Status.Detail);
        Assert.Equal(0, server.Host.Current!.Batcher.ReservedItems);
    }

    [Fact]
    public async Task Classify_ConfiguredMaxPixels_IsTheCap()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), settings: "--Decoding:MaxPixels=60000");

        var fits = await server.Stub.ClassifyAsync(EncodedRequest("fits", Images.Png(300, 200, seed: 8))).ResponseAsync.WaitAsync(TestServer.Timeout);
        var error = await Assert.ThrowsAsync<RpcException>(() => server.Stub.ClassifyAsync(EncodedRequest("over", Images.Png(301, 200, seed: 8))).ResponseAsync)
            .WaitAsync(TestServer.Timeout);

        Assert.Single(fits.Predictions);
        Assert.Equal("encoded.images[0]: The PNG image is 301 x 200 pixels; at most 60,000 pixels are accepted.", error.Status.Detail);
    }

    [Fact]
    public async Task ClassifyStream_BackloggedStream_UnaryCallerOnAnotherConnectionRunsInTheNextBatch()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), settings: "--Batching:MaxBatchSize=4");
        Task<ClassifyResponse>[] streamed;
        Task<ClassifyResponse> unary;
        await using (ClassifyStreamSession stream = server.Client.OpenStream(TestServer.Timeout))
        {
            using (Traffic.Held(backend))
            {
                Task<int> started = Traffic.NextBatchStarted(backend);
                var first = stream.ClassifyAsync(Constant("s0", 0));
                int firstBatch = await started.WaitAsync(TestServer.Timeout);
                streamed = [first, .. Enumerable.Range(1, 23).Select(i => stream.ClassifyAsync(Constant($"s{i}", 0)))];
                await Traffic.QueuedImagesBecome(server, 24 - firstBatch);

                // Its own connection: TestServer.Channel is not the client's.
                unary = new Classifier.ClassifierClient(server.Channel).ClassifyAsync(Constant("unary", 255)).ResponseAsync;
                await Traffic.QueuedImagesBecome(server, 25 - firstBatch);
            }
            await Task.WhenAll(streamed.Append(unary)).WaitAsync(TestServer.Timeout);
        }

        // Strict FIFO would run the unary image in the sixth batch, after the stream's whole backlog.
        float[][] batches = [.. backend.BatchInputs];
        int imageLength = batches[0].Length / backend.BatchSizes.First();
        int batchOfUnary = Array.FindIndex(batches, input =>
            Enumerable.Range(0, input.Length / imageLength).Any(i => input[i * imageLength] > 0));
        Assert.Equal(1, batchOfUnary);
    }

    [Fact]
    public async Task DecodePool_MoreDecodesThanSlots_TheRestWaitForAFreeSlot()
    {
        using var pool = new DecodePool(Options.Create(new DecodingOptions { MaxConcurrentDecodes = 2 }));
        using var gate = new ManualResetEventSlim();
        var entered = Enumerable.Range(0, 3).Select(_ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
        Action Decode(int i) => () =>
        {
            entered[i].SetResult();
            Assert.True(gate.Wait(TestServer.Timeout));
        };

        var first = Task.Run(() => pool.RunAsync(Decode(0), CancellationToken.None));
        await entered[0].Task.WaitAsync(TestServer.Timeout);
        var second = Task.Run(() => pool.RunAsync(Decode(1), CancellationToken.None));
        await entered[1].Task.WaitAsync(TestServer.Timeout);
        var third = pool.RunAsync(Decode(2), CancellationToken.None);

        Assert.Equal(2, pool.Running);
        Assert.Equal(1, pool.Waiting);
        Assert.False(entered[2].Task.IsCompleted);
        Assert.Equal(2, pool.Started);
        gate.Set();
        await Task.WhenAll(first, second, third).WaitAsync(TestServer.Timeout);
        Assert.Equal(3, pool.Started);
        Assert.Equal(0, pool.Running);
    }

    [Fact]
    public async Task DecodePool_Metrics_DecodesRunningWaitingAndTheWaitForASlot()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var meters = services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        using var metrics = new XRay.Server.Telemetry.XRayMetrics(meters);
        using var active = new MetricCollector<int>(meters, XRay.Server.Telemetry.XRayMetrics.MeterName, XRay.Server.Telemetry.XRayMetrics.DecodesActiveName);
        using var waiting = new MetricCollector<int>(meters, XRay.Server.Telemetry.XRayMetrics.MeterName, XRay.Server.Telemetry.XRayMetrics.DecodesWaitingName);
        using var waits = new MetricCollector<double>(meters, XRay.Server.Telemetry.XRayMetrics.MeterName, XRay.Server.Telemetry.XRayMetrics.DecodeWaitName);
        using var pool = new DecodePool(Options.Create(new DecodingOptions { MaxConcurrentDecodes = 1 }), metrics);
        using var gate = new ManualResetEventSlim();
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int Last(MetricCollector<int> gauge)
        {
            gauge.RecordObservableInstruments();
            return gauge.LastMeasurement!.Value;
        }

        var running = Task.Run(() => pool.RunAsync(() => { entered.SetResult(); Assert.True(gate.Wait(TestServer.Timeout)); }, CancellationToken.None));
        await entered.Task.WaitAsync(TestServer.Timeout);
        var queued = pool.RunAsync(() => { }, CancellationToken.None);

        Assert.Equal(1, Last(active));
        Assert.Equal(1, Last(waiting));
        Assert.Single(waits.GetMeasurementSnapshot());
        gate.Set();
        await Task.WhenAll(running, queued).WaitAsync(TestServer.Timeout);
        Assert.Equal(0, Last(active));
        Assert.Equal(0, Last(waiting));
        Assert.Equal(2, waits.GetMeasurementSnapshot().Count);
    }

    [Fact]
    public async Task DecodePool_CancelledWhileWaiting_NeverDecodes()
    {
        using var pool = new DecodePool(Options.Create(new DecodingOptions { MaxConcurrentDecodes = 1 }));
        using var gate = new ManualResetEventSlim();
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = Task.Run(() => pool.RunAsync(() => { entered.SetResult(); Assert.True(gate.Wait(TestServer.Timeout)); }, CancellationToken.None));
        await entered.Task.WaitAsync(TestServer.Timeout);
        using var cancel = new CancellationTokenSource();
        bool decoded = false;

        var waiting = pool.RunAsync(() => decoded = true, cancel.Token);
        cancel.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting).WaitAsync(TestServer.Timeout);
        gate.Set();
        await running.WaitAsync(TestServer.Timeout);
        Assert.False(decoded);
        Assert.Equal(0, pool.Waiting);
        Assert.Equal(1, pool.Started);
    }

    [Fact]
    public void DecodingOptions_ZeroConcurrency_MeansOnePerProcessor()
    {
        Assert.Equal(Environment.ProcessorCount, new DecodingOptions().EffectiveMaxConcurrentDecodes);
        Assert.Equal(3, new DecodingOptions { MaxConcurrentDecodes = 3 }.EffectiveMaxConcurrentDecodes);
    }
}
