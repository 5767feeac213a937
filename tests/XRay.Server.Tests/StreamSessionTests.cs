using Grpc.Core;
using XRay.Client;
using XRay.Contracts.V1;

namespace XRay.Server.Tests;

/// <summary>
/// The client's stream sessions over a scripted call (no server): a request whose write fails because the server
/// already ended the call gets the call's own status, not the write's.
/// </summary>
public sealed class StreamSessionTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task WriteFailsBeforeTheCallsStatusArrives_TheRequestGetsTheCallsStatus()
    {
        var responses = new ScriptedResponses();
        var requests = new FailingWriter(new RpcException(new Status(StatusCode.Cancelled, "the call has ended")));
        await using var session = new ClassifyStreamSession(Call(requests, responses));

        try
        {
            Task<ClassifyResponse> sent = session.ClassifyAsync(new ClassifyRequest());
            await requests.Written.Task.WaitAsync(Timeout);
            Assert.False(sent.IsCompleted); // waiting for the call's status
            responses.End(new RpcException(new Status(StatusCode.PermissionDenied, "role radiology required")));

            var failure = await Assert.ThrowsAsync<RpcException>(() => sent.WaitAsync(Timeout));
            Assert.Equal(StatusCode.PermissionDenied, failure.StatusCode);
        }
        finally
        {
            responses.End(failure: null); // the session's disposal waits for the response stream's end
        }
    }

    [Fact]
    public async Task AnswersComeBackByRequestId_InAnyOrder_AndAnErrorBecomesThatRequestsException()
    {
        var responses = new ScriptedResponses();
        var requests = new FailingWriter(failure: null);
        await using var session = new ClassifyStreamSession(Call(requests, responses));

        try
        {
            Task<ClassifyResponse> first = session.ClassifyAsync(new ClassifyRequest { RequestId = "a" });
            Task<ClassifyResponse> second = session.ClassifyAsync(new ClassifyRequest { RequestId = "b" });
            responses.Send(new ClassifyResponse { RequestId = "b", ModelName = "m" });
            responses.Send(new ClassifyResponse { RequestId = "a", Error = new Error { Code = (int)StatusCode.InvalidArgument, Message = "bad" } });

            Assert.Equal("m", (await second.WaitAsync(Timeout)).ModelName);
            var failure = await Assert.ThrowsAsync<RpcException>(() => first.WaitAsync(Timeout));
            Assert.Equal(StatusCode.InvalidArgument, failure.StatusCode);
        }
        finally
        {
            responses.End(failure: null);
        }
    }

    private static AsyncDuplexStreamingCall<ClassifyRequest, ClassifyResponse> Call(FailingWriter requests, ScriptedResponses responses) =>
        new(requests, responses, Task.FromResult(new Metadata()), () => Status.DefaultSuccess, () => [], () => { });

    private sealed class FailingWriter(Exception? failure) : IClientStreamWriter<ClassifyRequest>
    {
        public TaskCompletionSource Written { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public WriteOptions? WriteOptions { get; set; }

        public Task WriteAsync(ClassifyRequest message)
        {
            Written.TrySetResult();
            return failure is null ? Task.CompletedTask : Task.FromException(failure);
        }

        public Task CompleteAsync() => Task.CompletedTask;
    }

    private sealed class ScriptedResponses : IAsyncStreamReader<ClassifyResponse>
    {
        private readonly System.Threading.Channels.Channel<ClassifyResponse> _channel =
            System.Threading.Channels.Channel.CreateUnbounded<ClassifyResponse>();
        private Exception? _failure;
        private int _ended;

        public ClassifyResponse Current { get; private set; } = null!;

        public void Send(ClassifyResponse response) => _channel.Writer.TryWrite(response);

        /// <summary>Ends the stream, with <paramref name="failure"/> as the call's status (the first end counts).</summary>
        public void End(Exception? failure)
        {
            if (Interlocked.Exchange(ref _ended, 1) == 0)
            {
                _failure = failure;
                _channel.Writer.TryComplete();
            }
        }

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (await _channel.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false) && _channel.Reader.TryRead(out var next))
            {
                Current = next;
                return true;
            }
            return _failure is null ? false : throw _failure;
        }
    }
}
