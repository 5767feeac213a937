using System.Diagnostics.Metrics;
using System.Net;
using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using XRay.Contracts.V1;
using XRay.Server.Telemetry;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests;

/// <summary>The server's instruments after known traffic, read with MetricCollector (each server has its own IMeterFactory).</summary>
[Collection(nameof(ObservabilityCollection))]
public sealed class MetricsTests
{
    private static readonly TimeSpan Timeout = TestServer.Timeout;

    private static MetricCollector<T> Collect<T>(TestServer server, string instrument) where T : struct =>
        new(server.App.Services.GetRequiredService<IMeterFactory>(), XRayMetrics.MeterName, instrument);

    private static long Sum(MetricCollector<long> collector, string tag, string value) =>
        collector.GetMeasurementSnapshot().Where(m => Equals(m.Tags.GetValueOrDefault(tag), value)).Sum(m => m.Value);

    private static long Last(MetricCollector<int> collector)
    {
        collector.RecordObservableInstruments();
        return collector.LastMeasurement!.Value;
    }

    [Fact]
    public async Task Classify_TenRequestsInBatchesOfFive_RecordsTwoBatchesOfFiveAndEveryRequest()
    {
        var backend = new FakeModelBackend();
        // A partial batch waits up to 10 s for more, so batches form only when five images are queued.
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend),
            settings: ["--Batching:MaxBatchSize=5", "--Batching:MaxQueueDelayMicroseconds=10000000"]);
        using var batchSize = Collect<int>(server, XRayMetrics.BatchSizeName);
        using var batches = Collect<long>(server, XRayMetrics.BatchesName);
        using var images = Collect<long>(server, XRayMetrics.ImagesClassifiedName);
        using var computeTime = Collect<double>(server, XRayMetrics.BatchDurationName);
        using var duration = Collect<double>(server, XRayMetrics.RequestDurationName);
        using var timeInQueue = Collect<double>(server, XRayMetrics.RequestTimeInQueueName);
        using var active = Collect<long>(server, XRayMetrics.ActiveRequestsName);
        using var queueDepth = Collect<int>(server, XRayMetrics.QueueDepthName);
        using var activeBatches = Collect<int>(server, XRayMetrics.ActiveBatchesName);
        using IDisposable held = Held(backend);
        Task<int> first = NextBatchStarted(backend);

        var calls = Enumerable.Range(0, 10).Select(i => server.Client.ClassifyAsync(Request(i))).ToArray();
        Assert.Equal(5, await first.WaitAsync(Timeout));
        await QueuedImagesBecome(server, 5);
        long depthWhileHeld = Last(queueDepth), batchesWhileHeld = Last(activeBatches);
        long activeWhileHeld = active.GetMeasurementSnapshot().Sum(m => m.Value);
        backend.Release();
        await Task.WhenAll(calls).WaitAsync(Timeout);

        Assert.Equal(5, depthWhileHeld);
        Assert.Equal(1, batchesWhileHeld);
        Assert.Equal(10, activeWhileHeld);
        Assert.Equal(new[] { 5, 5 }, batchSize.GetMeasurementSnapshot().Select(m => m.Value));
        Assert.Equal(2, batches.GetMeasurementSnapshot().Sum(m => m.Value));
        Assert.All(batches.GetMeasurementSnapshot(), m => Assert.False(m.Tags.ContainsKey(XRayMetrics.ErrorTypeTag)));
        Assert.Equal(10, images.GetMeasurementSnapshot().Sum(m => m.Value));
        Assert.Equal(2, computeTime.GetMeasurementSnapshot().Count);
        var requests = duration.GetMeasurementSnapshot();
        Assert.Equal(10, requests.Count);
        Assert.All(requests, m =>
        {
            Assert.Equal(ClassifierMethods.Classify, m.Tags[XRayMetrics.MethodTag]);
            Assert.Equal("OK", m.Tags[XRayMetrics.StatusCodeTag]);
            Assert.Equal("fake", m.Tags[XRayMetrics.ModelTag]);
            Assert.InRange(m.Value, 0, Timeout.TotalSeconds);
        });
        Assert.Equal(10, timeInQueue.GetMeasurementSnapshot().Count);
        Assert.Equal(0, active.GetMeasurementSnapshot().Sum(m => m.Value));
        Assert.Equal(0, Last(queueDepth));
        Assert.Equal(0, Last(activeBatches));
    }

    [Fact]
    public async Task ClassifyStream_EachMessageIsARequest_AndGetModelInfoIsTimed()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        using var duration = Collect<double>(server, XRayMetrics.RequestDurationName);
        using var failed = Collect<long>(server, XRayMetrics.FailedRequestsName);
        using var active = Collect<long>(server, XRayMetrics.ActiveRequestsName);

        using var timeout = new CancellationTokenSource(Timeout);
        using var call = server.Stub.ClassifyStream(cancellationToken: timeout.Token);
        await call.RequestStream.WriteAsync(Request(1)).WaitAsync(Timeout);
        await call.RequestStream.WriteAsync(InvalidRequest("bad")).WaitAsync(Timeout);
        await call.RequestStream.WriteAsync(Request(2, images: 3)).WaitAsync(Timeout);
        await call.RequestStream.CompleteAsync().WaitAsync(Timeout);
        var responses = new List<ClassifyResponse>();
        // Bounded by the call's cancellation token.
        await foreach (ClassifyResponse response in call.ResponseStream.ReadAllAsync(timeout.Token))
        {
            responses.Add(response);
        }
        await server.Stub.GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync.WaitAsync(Timeout);

        Assert.Equal(3, responses.Count);
        var stream = duration.GetMeasurementSnapshot().Where(m => Equals(m.Tags[XRayMetrics.MethodTag], ClassifierMethods.ClassifyStream)).ToList();
        Assert.Equal(new[] { "INVALID_ARGUMENT", "OK", "OK" }, stream.Select(m => (string)m.Tags[XRayMetrics.StatusCodeTag]!).Order());
        Assert.Equal(1, Sum(failed, XRayMetrics.MethodTag, ClassifierMethods.ClassifyStream));
        Assert.Equal(0, active.GetMeasurementSnapshot().Sum(m => m.Value));
        var info = Assert.Single(duration.GetMeasurementSnapshot(), m => Equals(m.Tags[XRayMetrics.MethodTag], ClassifierMethods.GetModelInfo));
        Assert.Equal("OK", info.Tags[XRayMetrics.StatusCodeTag]);
    }

    [Fact]
    public async Task Rejections_AreCountedByReason_WithFailuresByStatus()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend),
            settings: ["--Batching:MaxBatchSize=4", "--Batching:MaxQueueSize=4"]);
        using var rejected = Collect<long>(server, XRayMetrics.RejectedRequestsName);
        using var failed = Collect<long>(server, XRayMetrics.FailedRequestsName);
        using var images = Collect<long>(server, XRayMetrics.ImagesClassifiedName);

        Assert.Equal(StatusCode.InvalidArgument, await StatusOf(server.Client.ClassifyAsync(InvalidRequest("bad"))));
        using IDisposable held = Held(backend);
        Task<int> first = NextBatchStarted(backend);
        Task<ClassifyResponse> running = server.Client.ClassifyAsync(Request(0));
        await first.WaitAsync(Timeout);

        // Expires while queued behind the held batch. The client enforces its copy of the deadline too and cancels the
        // call a moment before the server's copy passes: whichever reaches the batcher first decides between the
        // server's "deadline" and "cancelled" (the mapping itself is unit-tested in GrpcErrorsTests).
        var expired = server.Stub.ClassifyAsync(Request(1), deadline: DateTime.UtcNow.AddSeconds(2)).ResponseAsync;
        await QueuedImagesBecome(server, 1);
        Assert.Equal(StatusCode.DeadlineExceeded, await StatusOf(expired));
        long ExpiredOrCancelled() => Sum(rejected, XRayMetrics.ReasonTag, RejectionReasons.Deadline) + Sum(rejected, XRayMetrics.ReasonTag, RejectionReasons.Cancelled);
        await WaitUntilAsync(() => ExpiredOrCancelled() == 1, "the expired request is counted");
        await QueuedImagesBecome(server, 0);

        using (var cancel = new CancellationTokenSource())
        {
            var cancelled = server.Stub.ClassifyAsync(Request(2), cancellationToken: cancel.Token).ResponseAsync;
            await QueuedImagesBecome(server, 1);
            cancel.Cancel();
            Assert.Equal(StatusCode.Cancelled, await StatusOf(cancelled));
        }
        await WaitUntilAsync(() => ExpiredOrCancelled() == 2, "the cancellation is counted");
        await QueuedImagesBecome(server, 0);

        Task<ClassifyResponse> queued = server.Client.ClassifyAsync(Request(3, images: 4));
        await QueuedImagesBecome(server, 4);
        Assert.Equal(StatusCode.ResourceExhausted, await StatusOf(server.Client.ClassifyAsync(Request(4))));
        backend.Release();
        await Task.WhenAll(running, queued).WaitAsync(Timeout);

        Assert.Equal(1, Sum(rejected, XRayMetrics.ReasonTag, RejectionReasons.InvalidInput));
        Assert.Equal(1, Sum(rejected, XRayMetrics.ReasonTag, RejectionReasons.QueueFull));
        Assert.Equal(4, rejected.GetMeasurementSnapshot().Sum(m => m.Value));
        Assert.Equal(1, Sum(failed, XRayMetrics.StatusCodeTag, "INVALID_ARGUMENT"));
        Assert.Equal(2, Sum(failed, XRayMetrics.StatusCodeTag, "DEADLINE_EXCEEDED") + Sum(failed, XRayMetrics.StatusCodeTag, "CANCELLED"));
        Assert.InRange(Sum(rejected, XRayMetrics.ReasonTag, RejectionReasons.Cancelled), 1, 2);
        Assert.Equal(1, Sum(failed, XRayMetrics.StatusCodeTag, "RESOURCE_EXHAUSTED"));
        // Only what ran: the held request and the four-image one; the expired and cancelled ones never did.
        Assert.Equal(5, images.GetMeasurementSnapshot().Sum(m => m.Value));
        Assert.Equal(5, backend.ImagesComputed);
    }

    [Fact]
    public async Task ModelFailure_CountsFailedBatchAndInternalStatus_NotARejection()
    {
        var backend = new FakeModelBackend { Failure = new InvalidOperationException("native crash") };
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        using var batches = Collect<long>(server, XRayMetrics.BatchesName);
        using var images = Collect<long>(server, XRayMetrics.ImagesClassifiedName);
        using var failed = Collect<long>(server, XRayMetrics.FailedRequestsName);
        using var rejected = Collect<long>(server, XRayMetrics.RejectedRequestsName);

        Assert.Equal(StatusCode.Internal, await StatusOf(server.Client.ClassifyAsync(Request(0))));

        var batch = Assert.Single(batches.GetMeasurementSnapshot());
        Assert.Equal(typeof(InvalidOperationException).FullName, batch.Tags[XRayMetrics.ErrorTypeTag]);
        Assert.Empty(images.GetMeasurementSnapshot());
        Assert.Equal(1, Sum(failed, XRayMetrics.StatusCodeTag, "INTERNAL"));
        Assert.Empty(rejected.GetMeasurementSnapshot());
    }

    [Fact]
    public async Task ModelGauges_FollowLoadingServingAndShutdown()
    {
        var backend = new FakeModelBackend();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend) { LoadGate = gate }, waitUntilServing: false);
        try
        {
            using var ready = Collect<int>(server, XRayMetrics.ModelReadyName);
            using var info = Collect<int>(server, XRayMetrics.ModelInfoName);
            using var capacity = Collect<int>(server, XRayMetrics.QueueCapacityName);
            using var rejected = Collect<long>(server, XRayMetrics.RejectedRequestsName);

            long readyWhileLoading = Last(ready);
            info.RecordObservableInstruments();
            capacity.RecordObservableInstruments();
            bool infoWhileLoading = info.GetMeasurementSnapshot().Count > 0, capacityWhileLoading = capacity.GetMeasurementSnapshot().Count > 0;
            Assert.Equal(StatusCode.Unavailable, await StatusOf(server.Client.ClassifyAsync(Request(0))));
            gate.SetResult();
            await server.WaitForHealthAsync(HealthCheckResponse.Types.ServingStatus.Serving);
            long readyWhileServing = Last(ready), infoWhileServing = Last(info), capacityWhileServing = Last(capacity);
            var labels = info.LastMeasurement!.Tags;

            // At shutdown a stream stops being read: what it sent before is answered, then it ends UNAVAILABLE.
            backend.Hold();
            Task<int> first = NextBatchStarted(backend);
            using var timeout = new CancellationTokenSource(Timeout);
            using var call = server.Stub.ClassifyStream(cancellationToken: timeout.Token);
            await call.RequestStream.WriteAsync(Request(1, "before")).WaitAsync(Timeout);
            await first.WaitAsync(Timeout);
            var responses = new Dictionary<string, ClassifyResponse>();
            // Bounded by the call's cancellation token.
            Task<StatusCode> read = Task.Run(async () =>
            {
                try
                {
                    await foreach (ClassifyResponse response in call.ResponseStream.ReadAllAsync(timeout.Token))
                    {
                        responses[response.RequestId] = response;
                    }
                    return StatusCode.OK;
                }
                catch (RpcException ex)
                {
                    return ex.StatusCode;
                }
            });
            Task stopping = server.App.StopAsync();
            await WaitUntilAsync(() => Last(ready) == 0, "the model reports not ready");
            backend.Release();
            await read.WaitAsync(Timeout);
            await stopping.WaitAsync(Timeout);

            Assert.Equal(0, readyWhileLoading);
            Assert.False(infoWhileLoading);
            Assert.False(capacityWhileLoading);
            Assert.Equal(1, readyWhileServing);
            Assert.Equal(1, infoWhileServing);
            Assert.Equal(1024, capacityWhileServing);
            Assert.Equal("fake", labels[XRayMetrics.ModelTag]);
            Assert.Equal("1.0.0", labels["xray.model.version"]);
            Assert.Equal("fake", labels["xray.model.architecture"]);
            Assert.Equal("cpu", labels["xray.model.device"]);
            Assert.Equal("fp32", labels["xray.model.precision"]);
            Assert.Single(responses["before"].Predictions);
            Assert.Equal(1, Sum(rejected, XRayMetrics.ReasonTag, RejectionReasons.NotReady));
        }
        finally
        {
            gate.TrySetResult();
            backend.Release();
            await server.DisposeAsync();
        }
    }

    [Fact]
    public async Task MetricsEndpoint_ServesPrometheusText_OnlyOnTheMetricsEndpoint()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        await server.Client.ClassifyAsync(Request(0)).WaitAsync(Timeout);
        using var http = new HttpClient { Timeout = Timeout };

        string text = await http.GetStringAsync($"{server.MetricsAddress}/metrics").WaitAsync(Timeout);
        using var overGrpcEndpoint = new HttpRequestMessage(HttpMethod.Get, $"{server.Address}/metrics")
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        using HttpResponseMessage grpcEndpoint = await http.SendAsync(overGrpcEndpoint).WaitAsync(Timeout);

        // Dotted names with units become Prometheus names with unit suffixes; buckets are the documented ones.
        Assert.Contains("# TYPE xray_server_request_duration_seconds histogram", text);
        Assert.Contains("le=\"0.0005\"", text);
        Assert.Contains("xray_server_batch_size_bucket{", text);
        Assert.Contains("le=\"4096\"", text);
        foreach (string name in new[]
        {
            "xray_server_request_time_in_queue_seconds_bucket", "xray_server_batch_duration_seconds_bucket",
            "xray_server_batches_total", "xray_server_images_classified_total", "xray_server_requests_rejected_total",
            "xray_server_requests_failed_total", "xray_server_active_requests", "xray_server_active_batches",
            "xray_server_queue_depth", "xray_server_queue_capacity", "xray_server_model_ready",
            "process_cpu_time_seconds_total", "process_memory_usage_bytes", "dotnet_gc_collections_total",
        })
        {
            Assert.Contains(name, text);
        }
        Assert.Contains("xray_model_name=\"fake\"", text);
        Assert.Matches("target_info\\{[^}]*service_name=\"xray-serving\"", text);
        Assert.Matches("target_info\\{[^}]*service_version=\"", text);
        Assert.Equal(HttpStatusCode.NotFound, grpcEndpoint.StatusCode);
    }
}
