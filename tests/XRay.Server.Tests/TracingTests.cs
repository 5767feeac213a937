using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Trace;
using XRay.Contracts.V1;
using XRay.Server.Telemetry;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests;

/// <summary>
/// Spans as the OpenTelemetry pipeline exports them (an in-memory exporter added to the server's own tracer
/// provider). The ActivitySource listeners are process-wide, so spans are picked out by this test's trace ids.
/// </summary>
[Collection(nameof(ObservabilityCollection))]
public sealed class TracingTests
{
    private static readonly TimeSpan Timeout = TestServer.Timeout;

    private sealed record Caller(ActivityTraceId TraceId, ActivitySpanId ParentSpanId)
    {
        public static Caller Create() => new(ActivityTraceId.CreateRandom(), ActivitySpanId.CreateRandom());

        public Metadata Headers => new() { { "traceparent", $"00-{TraceId}-{ParentSpanId}-01" } };
    }

    private static Task<TestServer> StartTracedServer(FakeModelBackend backend, List<Activity> exported) =>
        TestServer.StartAsync(new FakeModelBackendFactory(backend),
            builder => builder.Services.ConfigureOpenTelemetryTracerProvider(tracing => tracing.AddInMemoryExporter(exported)));

    private static string Hex(ActivitySpanId id) => id.ToHexString();

    private static bool IsBatchSpan(Activity span) =>
        span.Source.Name == XRayTracing.SourceName && span.OperationName == XRayTracing.BatchSpanName;

    [Fact]
    public async Task Classify_ContinuesTheCallersTrace_AndEachBatchSpanLinksTheRequestsItServed()
    {
        var exported = new List<Activity>();
        var backend = new FakeModelBackend();
        Caller[] callers = [Caller.Create(), Caller.Create(), Caller.Create()];
        var server = await StartTracedServer(backend, exported);
        try
        {
            Task<ClassifyResponse> Call(int i) => server.Stub.ClassifyAsync(Request(i), callers[i].Headers).ResponseAsync;
            backend.Hold();
            Task<int> first = NextBatchStarted(backend);
            Task<ClassifyResponse> alone = Call(0);
            await first.WaitAsync(Timeout);
            Task<ClassifyResponse>[] together = [Call(1), Call(2)];
            await QueuedImagesBecome(server, 2);
            backend.Release();
            await Task.WhenAll([alone, .. together]).WaitAsync(Timeout);
        }
        finally
        {
            backend.Release();
            // Stopping ends every request's span and flushes the exporter.
            await server.DisposeAsync();
        }

        Activity[] spans = [.. exported];
        Activity[] requests = callers.Select(caller => Assert.Single(spans, s => s.TraceId == caller.TraceId && s.Kind == ActivityKind.Server)).ToArray();
        for (int i = 0; i < callers.Length; i++)
        {
            Assert.Equal(callers[i].ParentSpanId, requests[i].ParentSpanId);
            Assert.Equal($"r{i}", requests[i].GetTagItem(XRayTracing.RequestIdTag));
        }
        var ourTraces = callers.Select(c => c.TraceId).ToHashSet();
        Activity[] batches = spans.Where(s => IsBatchSpan(s) && s.Links.Any(l => ourTraces.Contains(l.Context.TraceId)))
                                  .OrderBy(s => (int)s.GetTagItem(XRayTracing.BatchSizeTag)!).ToArray();
        Assert.Equal(2, batches.Length);
        Assert.Equal(1, batches[0].GetTagItem(XRayTracing.BatchSizeTag));
        Assert.Equal(new[] { requests[0].SpanId }, batches[0].Links.Select(l => l.Context.SpanId));
        Assert.Equal(2, batches[1].GetTagItem(XRayTracing.BatchSizeTag));
        Assert.Equal(new[] { requests[1].SpanId, requests[2].SpanId }.Select(Hex).Order(), batches[1].Links.Select(l => Hex(l.Context.SpanId)).Order());
        Assert.All(batches, batch =>
        {
            // A batch serves many traces, so it is a root of its own, not a child of any one request.
            Assert.Equal(default, batch.ParentSpanId);
            Assert.DoesNotContain(batch.TraceId, ourTraces);
        });
    }

    [Fact]
    public async Task ClassifyStream_EachMessageGetsASpanUnderTheCall_LinkedFromItsBatch()
    {
        var exported = new List<Activity>();
        var backend = new FakeModelBackend();
        var caller = Caller.Create();
        var server = await StartTracedServer(backend, exported);
        try
        {
            using var timeout = new CancellationTokenSource(Timeout);
            using var call = server.Stub.ClassifyStream(caller.Headers, cancellationToken: timeout.Token);
            await call.RequestStream.WriteAsync(Request(1, "m1")).WaitAsync(Timeout);
            await call.RequestStream.WriteAsync(Request(2, "m2")).WaitAsync(Timeout);
            await call.RequestStream.WriteAsync(InvalidRequest("bad")).WaitAsync(Timeout);
            await call.RequestStream.CompleteAsync().WaitAsync(Timeout);
            // Bounded by the call's cancellation token.
            await foreach (ClassifyResponse _ in call.ResponseStream.ReadAllAsync(timeout.Token))
            {
            }
        }
        finally
        {
            await server.DisposeAsync();
        }

        Activity[] spans = [.. exported];
        Activity rpc = Assert.Single(spans, s => s.TraceId == caller.TraceId && s.Kind == ActivityKind.Server);
        Activity[] messages = spans.Where(s => s.TraceId == caller.TraceId && s.OperationName == XRayTracing.StreamMessageSpanName).ToArray();
        Assert.Equal(new[] { "bad", "m1", "m2" }, messages.Select(m => (string)m.GetTagItem(XRayTracing.RequestIdTag)!).Order());
        Assert.All(messages, message => Assert.Equal(rpc.SpanId, message.ParentSpanId));
        Activity bad = messages.Single(m => Equals(m.GetTagItem(XRayTracing.RequestIdTag), "bad"));
        Assert.Equal("INVALID_ARGUMENT", bad.GetTagItem(XRayMetrics.StatusCodeTag));
        Assert.Equal(ActivityStatusCode.Unset, bad.Status);
        // The invalid message never reached the batcher: only the two others are linked from batches.
        var linked = spans.Where(IsBatchSpan).SelectMany(b => b.Links).Where(l => l.Context.TraceId == caller.TraceId)
                          .Select(l => Hex(l.Context.SpanId)).Order();
        Assert.Equal(messages.Where(m => m != bad).Select(m => Hex(m.SpanId)).Order(), linked);
    }

    [Fact]
    public async Task OtlpExport_WhenConfigured_SendsTheCallersTraceToTheCollector()
    {
        await using var collector = await FakeOtlpCollector.StartAsync();
        var backend = new FakeModelBackend();
        var caller = Caller.Create();
        var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), configure: null, waitUntilServing: true,
            $"--Telemetry:OtlpEndpoint={collector.Address}", "--Telemetry:OtlpProtocol=http/protobuf");
        try
        {
            await server.Stub.ClassifyAsync(Request(0), caller.Headers).ResponseAsync.WaitAsync(Timeout);
        }
        finally
        {
            // Disposing the tracer provider exports what its batch processor still holds.
            await server.DisposeAsync();
        }

        var traceId = new byte[16];
        caller.TraceId.CopyTo(traceId);
        byte[][] traces = collector.Received.Where(r => r.Path == "/v1/traces").Select(r => r.Body).ToArray();
        Assert.NotEmpty(traces);
        // OTLP protobuf carries trace ids as raw bytes and resource attributes as strings.
        Assert.Contains(traces, body => body.AsSpan().IndexOf(traceId) >= 0);
        Assert.Contains(traces, body => body.AsSpan().IndexOf("xray-serving"u8) >= 0);
    }

    [Theory]
    [InlineData("--Telemetry:OtlpEndpoint=collector:4317", "OtlpEndpoint")]
    [InlineData("--Telemetry:OtlpProtocol=udp", "OtlpProtocol")]
    [InlineData("--Telemetry:TraceSamplingRatio=2", "TraceSamplingRatio")]
    public async Task Startup_InvalidTelemetryOptions_FailLoudly(string setting, string named)
    {
        var error = await Record.ExceptionAsync(() => TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()), settings: setting));

        var validation = Assert.IsType<Microsoft.Extensions.Options.OptionsValidationException>(error);
        Assert.Contains(named, validation.Message);
    }

    /// <summary>An OTLP/HTTP receiver on loopback that keeps every request body.</summary>
    private sealed class FakeOtlpCollector : IAsyncDisposable
    {
        private readonly WebApplication _app;

        private FakeOtlpCollector(WebApplication app) => _app = app;

        public ConcurrentQueue<(string Path, byte[] Body)> Received { get; } = new();

        public string Address { get; private set; } = "";

        public static async Task<FakeOtlpCollector> StartAsync()
        {
            var builder = WebApplication.CreateSlimBuilder();
            // Not the server's appsettings.json beside the test binaries, with its Kestrel endpoints.
            builder.Configuration.Sources.Clear();
            builder.Configuration.AddInMemoryCollection();
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            WebApplication app = builder.Build();
            var collector = new FakeOtlpCollector(app);
            app.MapPost("/v1/{signal}", async (HttpContext context) =>
            {
                using var body = new MemoryStream();
                await context.Request.Body.CopyToAsync(body);
                collector.Received.Enqueue((context.Request.Path.Value!, body.ToArray()));
                // An empty Export*ServiceResponse.
                context.Response.ContentType = "application/x-protobuf";
            });
            await app.StartAsync().WaitAsync(Timeout);
            collector.Address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
            return collector;
        }

        public async ValueTask DisposeAsync()
        {
            await _app.StopAsync().WaitAsync(Timeout);
            await _app.DisposeAsync();
        }
    }
}
