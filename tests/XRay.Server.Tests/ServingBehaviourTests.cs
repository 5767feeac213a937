using Grpc.Core;
using Grpc.Health.V1;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests;

/// <summary>Batching, back-pressure, failures and shutdown through a real Kestrel, with a fake model that the test holds and releases.</summary>
public sealed class ServingBehaviourTests
{
    private const int Size = 224;
    private static readonly TimeSpan Timeout = TestServer.Timeout;

    private static ClassifyRequest Request(int seed, string? id = null) => new()
    {
        RequestId = id ?? $"r{seed}",
        Tensor = Tensors.UInt8(Images.RandomPixels(Size * Size, seed), 1, Size, Size),
    };

    [Fact]
    public async Task Classify_32ConcurrentCalls_RunInBatchesLargerThanOne()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        backend.Hold();
        Task<int> first = NextBatchStarted(backend);

        var calls = Enumerable.Range(0, 32).Select(i => server.Client.ClassifyAsync(Request(i))).ToArray();
        await first.WaitAsync(Timeout);
        await QueuedImagesBecome(server, 32 - backend.BatchSizes.Sum());
        backend.Release();
        ClassifyResponse[] responses = await Task.WhenAll(calls).WaitAsync(Timeout);

        Assert.Contains(responses, r => r.Predictions[0].Timing.BatchSize > 1);
        Assert.Equal(32, backend.BatchSizes.Sum());
        Assert.True(backend.BatchSizes.Count <= 3, $"batches: {string.Join(",", backend.BatchSizes)}");
        for (int i = 0; i < 32; i++)
        {
            var expected = FakeModelBackend.ExpectedLogits(Normalised(i), 14);
            Assert.Equal(expected, responses[i].Predictions[0].Logits, new FloatTolerance(1e-4f));
        }
    }

    [Fact]
    public async Task Classify_WithMaxBatchSize1_NeverBatches()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), settings: "--Batching:MaxBatchSize=1");

        ClassifyResponse[] responses = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => server.Client.ClassifyAsync(Request(i)))).WaitAsync(Timeout);

        Assert.All(responses, r => Assert.Equal(1, r.Predictions[0].Timing.BatchSize));
        Assert.All(backend.BatchSizes, size => Assert.Equal(1, size));
    }

    [Fact]
    public async Task Classify_QueueFull_IsResourceExhausted()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend),
            settings: ["--Batching:MaxBatchSize=2", "--Batching:MaxQueueSize=4"]);
        backend.Hold();
        Task<int> first = NextBatchStarted(backend);
        Task<ClassifyResponse> running = server.Client.ClassifyAsync(Request(0));
        await first.WaitAsync(Timeout);
        var queued = Enumerable.Range(1, 4).Select(i => server.Client.ClassifyAsync(Request(i))).ToArray();
        await QueuedImagesBecome(server, 4);

        var rejected = await Assert.ThrowsAsync<RpcException>(() => server.Client.ClassifyAsync(Request(9))).WaitAsync(Timeout);

        Assert.Equal(StatusCode.ResourceExhausted, rejected.StatusCode);
        Assert.Contains("queue", rejected.Status.Detail, StringComparison.OrdinalIgnoreCase);
        backend.Release();
        await Task.WhenAll([running, .. queued]).WaitAsync(Timeout);
    }

    [Fact]
    public async Task Classify_DeadlinePassesWhileQueued_IsDeadlineExceededAndNeverComputed()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        backend.Hold();
        Task<int> first = NextBatchStarted(backend);
        Task<ClassifyResponse> running = server.Client.ClassifyAsync(Request(0));
        await first.WaitAsync(Timeout);

        var expired = await Assert.ThrowsAsync<RpcException>(() =>
            server.Stub.ClassifyAsync(Request(1), deadline: DateTime.UtcNow.AddMilliseconds(300)).ResponseAsync).WaitAsync(Timeout);
        // The client's deadline fires a little before the server's: release the model only once the server dropped it.
        await QueuedImagesBecome(server, 0);
        backend.Release();
        await running.WaitAsync(Timeout);
        await server.Client.ClassifyAsync(Request(2)).WaitAsync(Timeout);

        Assert.Equal(StatusCode.DeadlineExceeded, expired.StatusCode);
        Assert.Equal(2, backend.ImagesComputed);
    }

    [Fact]
    public async Task Classify_ModelFails_OnlyThatBatchFailsWithInternalAndServerKeepsServing()
    {
        var backend = new FakeModelBackend { Failure = new InvalidOperationException("native crash details") };
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));

        var failed = await Assert.ThrowsAsync<RpcException>(() => server.Client.ClassifyAsync(Request(0))).WaitAsync(Timeout);
        backend.Failure = null;
        ClassifyResponse next = await server.Client.ClassifyAsync(Request(1)).WaitAsync(Timeout);

        Assert.Equal(StatusCode.Internal, failed.StatusCode);
        Assert.DoesNotContain("native crash details", failed.Status.Detail);
        Assert.Single(next.Predictions);
    }

    [Fact]
    public async Task Shutdown_StopsAdmittingAndFinishesQueuedRequests()
    {
        var backend = new FakeModelBackend();
        var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        backend.Hold();
        Task<int> first = NextBatchStarted(backend);
        Task<ClassifyResponse> running = server.Client.ClassifyAsync(Request(0));
        await first.WaitAsync(Timeout);
        var queued = Enumerable.Range(1, 3).Select(i => server.Client.ClassifyAsync(Request(i))).ToArray();
        await QueuedImagesBecome(server, 3);
        Task stopping;

        // Opened before the stop: once stopping, the server no longer accepts connections.
        using (TestServer.HealthWatch health = server.WatchHealth())
        {
            await health.UntilAsync(HealthCheckResponse.Types.ServingStatus.Serving);
            stopping = server.App.StopAsync();
            await health.UntilAsync(HealthCheckResponse.Types.ServingStatus.NotServing);
        }
        // Refused either by the batcher (no longer admitting) or by Kestrel (no new streams): UNAVAILABLE both ways.
        var refused = await Assert.ThrowsAsync<RpcException>(() => server.Client.ClassifyAsync(Request(9))).WaitAsync(Timeout);
        backend.Release();
        ClassifyResponse[] finished = await Task.WhenAll([running, .. queued]).WaitAsync(Timeout);
        await stopping.WaitAsync(Timeout);

        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        Assert.All(finished, r => Assert.Single(r.Predictions));
        Assert.Equal(4, backend.ImagesComputed);
        await server.DisposeAsync();
    }

    [Fact]
    public async Task Startup_NotServingAndUnavailableUntilTheModelIsLoaded()
    {
        var backend = new FakeModelBackend();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend) { LoadGate = gate }, waitUntilServing: false);

        var status = await server.Client.CheckHealthAsync().WaitAsync(Timeout);
        var early = await Assert.ThrowsAsync<RpcException>(() => server.Client.ClassifyAsync(Request(0))).WaitAsync(Timeout);
        gate.SetResult();
        await server.WaitForHealthAsync(HealthCheckResponse.Types.ServingStatus.Serving);
        ClassifyResponse later = await server.Client.ClassifyAsync(Request(0)).WaitAsync(Timeout);

        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, status);
        Assert.Equal(StatusCode.Unavailable, early.StatusCode);
        Assert.Single(later.Predictions);
    }

    [Fact]
    public async Task Classify_MultiImageRequestLargerThanMaxBatchSize_IsSplitAndAnsweredInOrder()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), settings: "--Batching:MaxBatchSize=4");
        byte[] pixels = Images.RandomPixels(10 * Size * Size, seed: 42);

        ClassifyResponse response = await server.Client.ClassifyTensorAsync(pixels, [10, 1, Size, Size]).WaitAsync(Timeout);

        Assert.Equal(10, response.Predictions.Count);
        Assert.All(backend.BatchSizes, size => Assert.True(size <= 4));
        for (int i = 0; i < 10; i++)
        {
            var expected = FakeModelBackend.ExpectedLogits(Normalise(pixels.AsSpan(i * Size * Size, Size * Size)), 14);
            Assert.Equal(expected, response.Predictions[i].Logits, new FloatTolerance(1e-4f));
        }
    }

    [Fact]
    public async Task Startup_InvalidBatchingOptions_FailLoudly()
    {
        var error = await Record.ExceptionAsync(() => TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()), settings: "--Batching:MaxBatchSize=0"));

        var validation = Assert.IsType<Microsoft.Extensions.Options.OptionsValidationException>(error);
        Assert.Contains("Batching:MaxBatchSize is 0; it must be between 1 and 4096.", validation.Message);
    }

    [Fact]
    public async Task Startup_QueueSmallerThanABatch_ReportsTheRealProblem()
    {
        var error = await Record.ExceptionAsync(() => TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()),
            settings: ["--Batching:MaxBatchSize=64", "--Batching:MaxQueueSize=16"]));

        var validation = Assert.IsType<Microsoft.Extensions.Options.OptionsValidationException>(error);
        Assert.Contains("Batching:MaxQueueSize is 16; it must be at least Batching:MaxBatchSize (64).", validation.Message);
    }

    private static float[] Normalised(int seed) => Normalise(Images.RandomPixels(Size * Size, seed));

    private static float[] Normalise(ReadOnlySpan<byte> grayscale)
    {
        var preprocessor = new XRay.Model.ImagePreprocessor(new XRay.Model.PreprocessingSpec());
        var output = new float[preprocessor.OutputLength];
        preprocessor.NormalizeUInt8(grayscale, 1, output);
        return output;
    }

    private sealed class FloatTolerance(float tolerance) : IEqualityComparer<float>
    {
        public bool Equals(float x, float y) => Math.Abs(x - y) <= tolerance;
        public int GetHashCode(float obj) => 0;
    }
}
