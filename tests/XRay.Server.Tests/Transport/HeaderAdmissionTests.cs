using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using Microsoft.Extensions.Time.Testing;
using XRay.Server.Grpc;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests.Transport;

/// <summary>
/// Overload refusals that cost almost nothing: a unary Classify call the queue cannot take, or whose deadline is shorter
/// than the estimated wait, is answered from its headers before its message is read.
/// </summary>
public sealed class HeaderAdmissionTests
{
    private static readonly TimeSpan Timeout = TestServer.Timeout;

    // Not a ClassifyRequest: parsing it fails, so a call answered anything but INVALID_ARGUMENT was never parsed.
    private static readonly byte[] Garbage = RawGrpc.Frame([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);

    [Fact]
    public async Task Classify_QueueFull_RefusedFromHeadersBeforeTheMessageIsRead()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), builder =>
        {
            builder.Logging.AddFakeLogging();
            builder.Logging.SetMinimumLevel(LogLevel.Information);
        }, waitUntilServing: true, "--Batching:MaxBatchSize=1", "--Batching:MaxQueueSize=2");
        using var raw = new RawGrpc(server.Address);
        Task[] admitted;
        using (Held(backend))
        {
            Task<int> started = NextBatchStarted(backend);
            var running = server.Stub.ClassifyAsync(Request(1)).ResponseAsync;
            await started.WaitAsync(Timeout);
            admitted = [running, .. new[] { Request(2), Request(3) }.Select(r => server.Stub.ClassifyAsync(r).ResponseAsync)];
            await QueuedImagesBecome(server, 2);

            RawResult garbage = await raw.CallAsync(RawGrpc.Classify, Garbage);
            var valid = await Assert.ThrowsAsync<RpcException>(() => server.Stub.ClassifyAsync(Request(4)).ResponseAsync).WaitAsync(Timeout);

            Assert.Equal(StatusCode.ResourceExhausted, garbage.Status);
            Assert.Equal("queue full: 2 of 2 images waiting, request has 1", garbage.Message);
            Assert.Empty(garbage.Messages);
            Assert.Equal(StatusCode.ResourceExhausted, valid.StatusCode);
            Assert.Equal("queue full: 2 of 2 images waiting, request has 1", valid.Status.Detail);
            Assert.Equal(0, server.Host.Current!.Batcher.ReservedItems);
        }
        await Task.WhenAll(admitted).WaitAsync(Timeout);

        // With room again the same connections carry on: the garbage is parsed (and refused), a valid call is answered.
        Assert.Equal(StatusCode.InvalidArgument, (await raw.CallAsync(RawGrpc.Classify, Garbage)).Status);
        Assert.Single((await server.Stub.ClassifyAsync(Request(5)).ResponseAsync.WaitAsync(Timeout)).Predictions);
        var refusals = server.App.Services.GetFakeLogCollector().GetSnapshot().Where(r => r.Id.Id == 22).ToArray();
        Assert.Equal(2, refusals.Length);
        Assert.All(refusals, r => Assert.Equal(LogLevel.Information, r.Level));
    }

    [Fact]
    public async Task Classify_DeadlineShorterThanEstimatedWait_RefusedFromHeaders_LongerDeadlineAdmitted()
    {
        var backend = new FakeModelBackend();
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend),
            builder => builder.Services.Replace(ServiceDescriptor.Singleton<TimeProvider>(clock)),
            waitUntilServing: true, "--Batching:MaxBatchSize=1", "--Batching:MaxQueueSize=8");
        using var raw = new RawGrpc(server.Address);

        // One image that took 1 s on the server's clock: the estimate is 1 s per image.
        using (Held(backend))
        {
            Task<int> started = NextBatchStarted(backend);
            var first = server.Stub.ClassifyAsync(Request(1)).ResponseAsync;
            await started.WaitAsync(Timeout);
            clock.Advance(TimeSpan.FromSeconds(1));
            backend.Release();
            await first.WaitAsync(Timeout);
        }
        Task[] admitted;
        using (Held(backend))
        {
            Task<int> started = NextBatchStarted(backend);
            var running = server.Stub.ClassifyAsync(Request(2)).ResponseAsync;
            await started.WaitAsync(Timeout);
            admitted = [running, .. new[] { Request(3), Request(4) }.Select(r => server.Stub.ClassifyAsync(r).ResponseAsync)];
            await QueuedImagesBecome(server, 2);

            // Two images ahead and its own: 3 s.
            RawResult garbage = await raw.CallAsync(RawGrpc.Classify, Garbage, null, ("grpc-timeout", "2S"));
            var shortDeadline = await Assert.ThrowsAsync<RpcException>(() =>
                server.Stub.ClassifyAsync(Request(5), deadline: DateTime.UtcNow.AddSeconds(2)).ResponseAsync).WaitAsync(Timeout);
            var longDeadline = server.Stub.ClassifyAsync(Request(6), deadline: DateTime.UtcNow.Add(Timeout)).ResponseAsync;
            await QueuedImagesBecome(server, 3);

            Assert.Equal(StatusCode.ResourceExhausted, garbage.Status);
            Assert.Equal("deadline too short: 2000 ms left, but the estimated wait is 3000 ms (2 images waiting ahead, 1000.0 ms per image). " +
                         "Retry with a longer deadline, later, or on another server.", garbage.Message);
            Assert.Equal(StatusCode.ResourceExhausted, shortDeadline.StatusCode);
            Assert.StartsWith("deadline too short: ", shortDeadline.Status.Detail);
            Assert.Contains("but the estimated wait is 3000 ms", shortDeadline.Status.Detail);
            admitted = [.. admitted, longDeadline];
        }
        await Task.WhenAll(admitted).WaitAsync(Timeout);
        Assert.Equal(6 - 1, backend.ImagesComputed);
    }

    [Fact]
    public void LogBudget_AtMostNLinesASecond_TheNextLineReportsThoseLeftOut()
    {
        var clock = new FakeTimeProvider();
        var budget = new LogBudget(2, clock);

        Assert.True(budget.TryTake(out long skipped));
        Assert.Equal(0, skipped);
        Assert.True(budget.TryTake(out _));
        Assert.False(budget.TryTake(out _));
        Assert.False(budget.TryTake(out _));
        clock.Advance(TimeSpan.FromMilliseconds(999));
        Assert.False(budget.TryTake(out _));
        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.True(budget.TryTake(out skipped));
        Assert.Equal(3, skipped);
        Assert.True(budget.TryTake(out skipped));
        Assert.Equal(0, skipped);
    }

    [Fact]
    public async Task Rejections_Flood_LoggedAtMostTenLinesASecond()
    {
        var backend = new FakeModelBackend();
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), builder =>
        {
            builder.Services.Replace(ServiceDescriptor.Singleton<TimeProvider>(clock));
            builder.Logging.AddFakeLogging();
            builder.Logging.SetMinimumLevel(LogLevel.Information);
        }, waitUntilServing: true);

        for (int i = 0; i < 25; i++)
        {
            Assert.Equal(StatusCode.InvalidArgument, await StatusOf(server.Stub.ClassifyAsync(InvalidRequest($"bad-{i}")).ResponseAsync));
        }
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(StatusCode.InvalidArgument, await StatusOf(server.Stub.ClassifyAsync(InvalidRequest("bad-last")).ResponseAsync));

        var lines = server.App.Services.GetFakeLogCollector().GetSnapshot().Where(r => r.Id.Id == 11).ToArray();
        Assert.Equal(11, lines.Length);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => $"bad-{i}"), lines.Take(10).Select(r => r.GetStructuredStateValue("RequestId")));
        Assert.Equal("bad-last", lines[10].GetStructuredStateValue("RequestId"));
        Assert.Equal("15", lines[10].GetStructuredStateValue("Skipped"));
    }

    [Theory]
    [InlineData("100m", 100_000_000)]
    [InlineData("5S", 5_000_000_000)]
    [InlineData("2M", 120_000_000_000)]
    [InlineData("1H", 3_600_000_000_000)]
    [InlineData("250u", 250_000)]
    [InlineData("1000n", 1_000)]
    [InlineData("99999999m", 99_999_999_000_000)]
    public void ParseTimeout_GrpcTimeoutUnits(string header, long nanoseconds)
    {
        Assert.Equal(TimeSpan.FromTicks(nanoseconds / 100), HeaderAdmission.ParseTimeout(header));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("m")]
    [InlineData("100")]
    [InlineData("100x")]
    [InlineData("-5m")]
    [InlineData("123456789m")]
    public void ParseTimeout_NotAGrpcTimeout_Null(string? header)
    {
        Assert.Null(HeaderAdmission.ParseTimeout(header));
    }

    [Fact]
    public void PercentEncode_KeepsPrintableAsciiEncodesTheRest()
    {
        Assert.Equal("queue full: 2 of 2%25 caf%C3%A9%0A", HeaderAdmission.PercentEncode("queue full: 2 of 2% café\n"));
    }
}
