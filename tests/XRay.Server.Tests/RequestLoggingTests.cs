using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using XRay.Contracts.V1;
using XRay.Server.Grpc;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests;

/// <summary>One structured log line per failed request, carrying its request id and never its pixels.</summary>
[Collection(nameof(ObservabilityCollection))]
public sealed class RequestLoggingTests
{
    private static readonly TimeSpan Timeout = TestServer.Timeout;
    private static readonly string Category = typeof(ClassifierService).FullName!;
    private static readonly string[] AllowedFields = ["RequestId", "Method", "StatusCode", "Detail", "Skipped", "{OriginalFormat}"];

    private static Task<TestServer> StartAsync(FakeModelBackendFactory factory, bool waitUntilServing = true) =>
        TestServer.StartAsync(factory, builder =>
        {
            builder.Logging.AddFakeLogging();
            builder.Logging.SetMinimumLevel(LogLevel.Information);
        }, waitUntilServing);

    private static FakeLogRecord[] RequestLogs(TestServer server) =>
        server.App.Services.GetFakeLogCollector().GetSnapshot().Where(r => r.Category == Category).ToArray();

    private static void AssertNoPixels(FakeLogRecord record)
    {
        Assert.All(record.StructuredState!, field => Assert.Contains(field.Key, AllowedFields));
        Assert.True(record.Message.Length < 400, record.Message);
    }

    [Fact]
    public async Task FailedRequests_LogOneLineEach_WithRequestIdAndStatus()
    {
        var backend = new FakeModelBackend();
        await using var server = await StartAsync(new FakeModelBackendFactory(backend));
        byte[] pixels = Images.RandomPixels(Size * Size, seed: 5);
        var nan = new float[Size * Size];
        nan[7] = float.NaN;

        await server.Client.ClassifyAsync(Request(0, "fine-1")).WaitAsync(Timeout);
        var invalid = new ClassifyRequest { RequestId = "nan-1", Tensor = XRay.Client.Tensors.Float32(nan, 1, Size, Size) };
        Assert.Equal(StatusCode.InvalidArgument, await StatusOf(server.Client.ClassifyAsync(invalid)));
        backend.Failure = new InvalidOperationException("native crash details");
        var failing = new ClassifyRequest { RequestId = "boom-1", Tensor = XRay.Client.Tensors.UInt8(pixels, 1, Size, Size) };
        Assert.Equal(StatusCode.Internal, await StatusOf(server.Client.ClassifyAsync(failing)));

        FakeLogRecord[] logs = RequestLogs(server);
        Assert.Equal(2, logs.Length);
        FakeLogRecord rejected = Assert.Single(logs, r => r.GetStructuredStateValue("RequestId") == "nan-1");
        Assert.Equal(LogLevel.Information, rejected.Level);
        Assert.Equal(11, rejected.Id.Id);
        Assert.Equal(nameof(StatusCode.InvalidArgument), rejected.GetStructuredStateValue("StatusCode"));
        Assert.Contains("nan-1", rejected.Message);
        FakeLogRecord fault = Assert.Single(logs, r => r.GetStructuredStateValue("RequestId") == "boom-1");
        Assert.Equal(LogLevel.Error, fault.Level);
        Assert.Equal(10, fault.Id.Id);
        Assert.IsType<XRay.Batching.BatchExecutionException>(fault.Exception);
        Assert.All(logs, AssertNoPixels);
    }

    [Fact]
    public async Task UnaryRequestBeforeTheModelIsReady_IsLogged()
    {
        var backend = new FakeModelBackend();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await StartAsync(new FakeModelBackendFactory(backend) { LoadGate = gate }, waitUntilServing: false);
        try
        {
            Assert.Equal(StatusCode.Unavailable, await StatusOf(server.Client.ClassifyAsync(Request(0, "early-1"))));
        }
        finally
        {
            gate.SetResult();
        }
        await server.WaitForHealthAsync(HealthCheckResponse.Types.ServingStatus.Serving);

        FakeLogRecord record = Assert.Single(RequestLogs(server));
        Assert.Equal("early-1", record.GetStructuredStateValue("RequestId"));
        Assert.Equal(nameof(StatusCode.Unavailable), record.GetStructuredStateValue("StatusCode"));
        AssertNoPixels(record);
    }

    [Fact]
    public async Task FailedStreamMessage_IsLoggedWithItsRequestId()
    {
        var backend = new FakeModelBackend();
        await using var server = await StartAsync(new FakeModelBackendFactory(backend));
        using var timeout = new CancellationTokenSource(Timeout);
        using var call = server.Stub.ClassifyStream(cancellationToken: timeout.Token);

        await call.RequestStream.WriteAsync(Request(1, "s-ok")).WaitAsync(Timeout);
        await call.RequestStream.WriteAsync(InvalidRequest("s-bad")).WaitAsync(Timeout);
        await call.RequestStream.CompleteAsync().WaitAsync(Timeout);
        // Bounded by the call's cancellation token.
        await foreach (ClassifyResponse _ in call.ResponseStream.ReadAllAsync(timeout.Token))
        {
        }

        FakeLogRecord record = Assert.Single(RequestLogs(server));
        Assert.Equal("s-bad", record.GetStructuredStateValue("RequestId"));
        Assert.Equal(Telemetry.ClassifierMethods.ClassifyStream, record.GetStructuredStateValue("Method"));
        AssertNoPixels(record);
    }

    [Fact]
    public async Task RequestWithoutRequestId_IsNamedByItsCall_InTheLogAndTheResponse()
    {
        // The typed client and the CLI send no request_id on unary calls: the log line must still name the request.
        var backend = new FakeModelBackend();
        await using var server = await StartAsync(new FakeModelBackendFactory(backend));

        ClassifyResponse fine = await server.Client.ClassifyAsync(Request(0, "")).WaitAsync(Timeout);
        Assert.Equal(StatusCode.InvalidArgument, await StatusOf(server.Client.ClassifyAsync(InvalidRequest(""))));
        using var timeout = new CancellationTokenSource(Timeout);
        using var call = server.Stub.ClassifyStream(cancellationToken: timeout.Token);
        await call.RequestStream.WriteAsync(InvalidRequest("")).WaitAsync(Timeout);
        await call.RequestStream.CompleteAsync().WaitAsync(Timeout);
        var streamed = new List<ClassifyResponse>();
        await foreach (ClassifyResponse response in call.ResponseStream.ReadAllAsync(timeout.Token))
        {
            streamed.Add(response);
        }

        // Kestrel's connection:stream id, as in its own logs.
        Assert.Matches("^[0-9A-Z]+:[0-9A-F]{8}$", fine.RequestId);
        FakeLogRecord[] logs = RequestLogs(server);
        Assert.Equal(2, logs.Length);
        Assert.All(logs, record =>
        {
            Assert.Matches("^[0-9A-Z]+:[0-9A-F]{8}$", record.GetStructuredStateValue("RequestId"));
            Assert.DoesNotContain("Request  (", record.Message);
        });
        Assert.NotEqual(logs[0].GetStructuredStateValue("RequestId"), logs[1].GetStructuredStateValue("RequestId"));
        Assert.NotEqual(fine.RequestId, logs[0].GetStructuredStateValue("RequestId"));
        // A stream's responses keep the ids the caller sent (clients match them by request_id).
        Assert.Equal("", Assert.Single(streamed).RequestId);
    }
}
