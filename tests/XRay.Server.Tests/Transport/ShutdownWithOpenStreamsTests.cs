using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Time.Testing;
using XRay.Server.Grpc;
using XRay.Contracts.V1;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests.Transport;

/// <summary>Stopping with client streams left open and idle: work is answered, streams are ended, the host does not wait out its timeout.</summary>
public sealed class ShutdownWithOpenStreamsTests
{
    // Well inside the host's 30 s shutdown timeout, which idle streams used to hold stopping to.
    private static readonly TimeSpan StopBound = TimeSpan.FromSeconds(10);

    private sealed record Ending(List<string> Answered, StatusCode Status, string Detail = "");

    /// <summary>Reads a stream to its end, as a client does, from now on.</summary>
    private static async Task<Ending> ReadToEndAsync(AsyncDuplexStreamingCall<ClassifyRequest, ClassifyResponse> stream)
    {
        var answered = new List<string>();
        try
        {
            while (await stream.ResponseStream.MoveNext())
            {
                ClassifyResponse response = stream.ResponseStream.Current;
                answered.Add(response.Error is null ? response.RequestId : $"{response.RequestId}: {response.Error.Message}");
            }
            return new Ending(answered, StatusCode.OK);
        }
        catch (RpcException ex)
        {
            return new Ending(answered, ex.StatusCode, ex.Status.Detail);
        }
    }

    [Fact]
    public async Task Stop_WithIdleStreamsAndAHealthWatchOpen_AnswersInFlightWork_AndEndsStreamsWithinTheBound()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        var streams = Enumerable.Range(0, 3).Select(_ => server.Stub.ClassifyStream()).ToArray();
        try
        {
            // One stream has been used and is idle now; one has a request in flight; one was never written to.
            await streams[0].RequestStream.WriteAsync(Request(1, "early"));
            Assert.True(await streams[0].ResponseStream.MoveNext().WaitAsync(TestServer.Timeout));
            Assert.Equal("early", streams[0].ResponseStream.Current.RequestId);

            Task stopped;
            Task<Ending>[] endings;
            using (Held(backend))
            {
                Task<int> started = NextBatchStarted(backend);
                await streams[1].RequestStream.WriteAsync(Request(2, "in-flight"));
                await started.WaitAsync(TestServer.Timeout);
                endings = streams.Select(ReadToEndAsync).ToArray();
                using TestServer.HealthWatch watch = server.WatchHealth();
                await watch.UntilAsync(HealthCheckResponse.Types.ServingStatus.Serving);

                stopped = server.App.StopAsync();
                await watch.UntilAsync(HealthCheckResponse.Types.ServingStatus.NotServing);
            }
            await stopped.WaitAsync(StopBound);
            Ending[] ended = await Task.WhenAll(endings).WaitAsync(TestServer.Timeout);

            Assert.Equal(["in-flight"], ended[1].Answered);
            Assert.Empty(ended[0].Answered);
            Assert.Empty(ended[2].Answered);
            // UNAVAILABLE as the server ends them. Never OK: the client must know later requests would not be read.
            // A stream whose client never half-closes can still, rarely (about 1 run in 10-20), see INTERNAL "The HTTP/2
            // server closed the connection. HTTP/2 error code 'NO_ERROR'": Kestrel's graceful close reaches the client
            // before that stream's end. Its answers were delivered (asserted above); only the ending status is lost.
            Assert.All(ended, ending => Assert.True(ending.Status is StatusCode.Unavailable or StatusCode.Internal, $"{ending.Status}: {ending.Detail}"));
            Assert.Contains(ended, ending => ending.Status == StatusCode.Unavailable);
        }
        finally
        {
            foreach (var stream in streams) stream.Dispose();
        }
    }

    /// <summary>What one client stream wrote, and what came back.</summary>
    private sealed class Sender(AsyncDuplexStreamingCall<ClassifyRequest, ClassifyResponse> call, int index)
    {
        private readonly CancellationTokenSource _refused = new();

        /// <summary>Requests whose write completed: the server may have read them.</summary>
        public List<string> Written { get; } = [];

        /// <summary>Answers by request id: 0 for predictions, else the in-band error's code.</summary>
        public Dictionary<string, int> Answers { get; } = [];

        /// <summary>
        /// Writes requests back to back, as a client with work queued does, until it reads the server's refusal (or a write
        /// fails because the call ended); then half-closes, as a client that has nothing more for this server does.
        /// </summary>
        public async Task WriteUntilRefusedAsync()
        {
            try
            {
                for (int n = 0; !_refused.IsCancellationRequested; n++)
                {
                    string id = $"s{index}-{n}";
                    await call.RequestStream.WriteAsync(Request(index * 1000 + n, id));
                    lock (Written) Written.Add(id);
                }
                await call.RequestStream.CompleteAsync();
            }
            catch (Exception ex) when (ex is RpcException or InvalidOperationException or OperationCanceledException)
            {
                // The call ended under the write: that request was not written.
            }
        }

        public async Task<StatusCode> ReadToEndAsync()
        {
            try
            {
                while (await call.ResponseStream.MoveNext())
                {
                    ClassifyResponse response = call.ResponseStream.Current;
                    int code = response.Error?.Code ?? 0;
                    lock (Answers) Assert.True(Answers.TryAdd(response.RequestId, code), $"{response.RequestId} answered twice");
                    if (code == (int)StatusCode.Unavailable) _refused.Cancel();
                }
                return StatusCode.OK;
            }
            catch (RpcException ex)
            {
                return ex.StatusCode;
            }
            finally
            {
                _refused.Cancel();
            }
        }
    }

    [Fact]
    public async Task Stop_WhileClientsKeepWritingOnManyStreamsOfOneChannel_AnswersOrRefusesEveryWrittenRequest()
    {
        const int Streams = 6;
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        // All on the test client's one channel, so on one HTTP/2 connection: what one stream's end does to the connection
        // reaches the others.
        var calls = Enumerable.Range(0, Streams).Select(_ => server.Stub.ClassifyStream()).ToArray();
        try
        {
            var senders = calls.Select((call, i) => new Sender(call, i)).ToArray();
            for (int i = 0; i < Streams; i++)
            {
                await calls[i].RequestStream.WriteAsync(Request(i, $"warm{i}"));
                Assert.True(await calls[i].ResponseStream.MoveNext().WaitAsync(TestServer.Timeout));
                Assert.Null(calls[i].ResponseStream.Current.Error);
            }

            Task stopped;
            Task<StatusCode>[] endings;
            Task[] writing;
            using (Held(backend))
            {
                // Work in flight on every stream, and every client writing more when the server is told to stop.
                int batched = backend.BatchSizes.Sum();
                Task<int> started = NextBatchStarted(backend);
                for (int i = 0; i < Streams; i++)
                {
                    await calls[i].RequestStream.WriteAsync(Request(100 + i, $"held{i}"));
                }
                await started.WaitAsync(TestServer.Timeout);
                await WaitUntilAsync(() => backend.BatchSizes.Sum() - batched + server.Host.Current!.Batcher.QueuedItems == Streams,
                    "every stream's request is in a batch or queued");
                endings = senders.Select(sender => sender.ReadToEndAsync()).ToArray();
                writing = senders.Select(sender => sender.WriteUntilRefusedAsync()).ToArray();
                using TestServer.HealthWatch watch = server.WatchHealth();
                stopped = server.App.StopAsync();
                await watch.UntilAsync(HealthCheckResponse.Types.ServingStatus.NotServing);
            }
            await stopped.WaitAsync(StopBound);
            StatusCode[] statuses = await Task.WhenAll(endings).WaitAsync(TestServer.Timeout);
            await Task.WhenAll(writing).WaitAsync(TestServer.Timeout);

            for (int i = 0; i < Streams; i++)
            {
                Sender sender = senders[i];
                // Never INTERNAL (the connection lost under the stream) nor OK: the server ended it for shutting down.
                Assert.Equal(StatusCode.Unavailable, statuses[i]);
                // The request in flight when the server began to stop is answered.
                Assert.Equal(0, sender.Answers[$"held{i}"]);
                // Every request written is answered, or refused in-band as UNAVAILABLE: none is lost.
                Assert.All(sender.Written, id => Assert.True(sender.Answers.ContainsKey(id), $"{id} was written and never answered"));
                Assert.All(sender.Answers.Values, code => Assert.Contains(code, new[] { 0, (int)StatusCode.Unavailable }));
                Assert.Contains((int)StatusCode.Unavailable, sender.Answers.Values);
            }
        }
        finally
        {
            foreach (var call in calls) call.Dispose();
        }
    }

    [Fact]
    public async Task Stop_WhileAStreamWaitsForAnAnswerLongerThanTheQuietPeriod_KeepsReading_SoItsNextRequestIsRefusedNotCutOff()
    {
        // The closer's clock only: the quiet period and the drain bound pass when the test says so.
        var clock = new FakeTimeProvider();
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend), builder =>
            builder.Services.Replace(ServiceDescriptor.Singleton(provider =>
                new StreamCloser(provider.GetRequiredService<IHostApplicationLifetime>(), clock))));
        using var stream = server.Stub.ClassifyStream();
        Task stopped;
        using (Held(backend))
        {
            Task<int> started = NextBatchStarted(backend);
            await stream.RequestStream.WriteAsync(Request(1, "waiting"));
            await started.WaitAsync(TestServer.Timeout);
            using TestServer.HealthWatch watch = server.WatchHealth();
            await watch.UntilAsync(HealthCheckResponse.Types.ServingStatus.Serving);
            stopped = server.App.StopAsync();
            await watch.UntilAsync(HealthCheckResponse.Types.ServingStatus.NotServing);
            // Nothing was written for longer than the quiet period, but the stream still had an answer to give.
            clock.Advance(StreamCloser.QuietPeriod * 2);
        }
        Assert.True(await stream.ResponseStream.MoveNext().WaitAsync(TestServer.Timeout));
        Assert.Equal("waiting", stream.ResponseStream.Current.RequestId);
        Assert.Null(stream.ResponseStream.Current.Error);

        // The client writes again on receiving its answer: the request is read and refused in the stream.
        await stream.RequestStream.WriteAsync(Request(2, "after the answer"));
        Assert.True(await stream.ResponseStream.MoveNext().WaitAsync(TestServer.Timeout));
        ClassifyResponse refused = stream.ResponseStream.Current;
        Assert.Equal("after the answer", refused.RequestId);
        Assert.Equal((int)StatusCode.Unavailable, refused.Error?.Code);
        await stream.RequestStream.CompleteAsync().WaitAsync(TestServer.Timeout);
        var end = await Assert.ThrowsAsync<RpcException>(() => stream.ResponseStream.MoveNext().WaitAsync(TestServer.Timeout));
        Assert.Equal(StatusCode.Unavailable, end.StatusCode);
        await stopped.WaitAsync(StopBound);
    }
}
