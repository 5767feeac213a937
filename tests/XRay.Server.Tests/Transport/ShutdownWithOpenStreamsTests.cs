using Grpc.Core;
using Grpc.Health.V1;
using XRay.Contracts.V1;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests.Transport;

/// <summary>Stopping with client streams left open and idle: work is answered, streams are ended, the host does not wait out its timeout.</summary>
public sealed class ShutdownWithOpenStreamsTests
{
    // Well inside the host's 30 s shutdown timeout, which idle streams used to hold stopping to.
    private static readonly TimeSpan StopBound = TimeSpan.FromSeconds(10);

    private sealed record Ending(List<string> Answered, StatusCode Status);

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
            return new Ending(answered, ex.StatusCode);
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
            // UNAVAILABLE as the server ends them; a client still sending on its half of the stream can instead see the
            // connection close first (INTERNAL). Never OK: the client must know its later requests were not read.
            Assert.All(ended, ending => Assert.Contains(ending.Status, new[] { StatusCode.Unavailable, StatusCode.Internal }));
            Assert.Contains(ended, ending => ending.Status == StatusCode.Unavailable);
        }
        finally
        {
            foreach (var stream in streams) stream.Dispose();
        }
    }
}
