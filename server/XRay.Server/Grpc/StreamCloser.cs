using Grpc.Core;
using Grpc.Health.V1;
using Grpc.HealthCheck;

namespace XRay.Server.Grpc;

/// <summary>
/// Ends long-lived streams when the server stops, so that Kestrel's graceful shutdown does not wait out the host's
/// timeout for clients that keep idle streams open. Registered after the model host, so its <see cref="StopAsync"/>
/// runs once health already reports NOT_SERVING and the queue is draining: ClassifyStream calls stop reading and end
/// once their requests are answered; health Watch calls end after sending NOT_SERVING.
/// </summary>
public sealed class StreamCloser : IHostedService, IDisposable
{
    private readonly CancellationTokenSource _closing = new();

    /// <summary>Cancelled when streams should end.</summary>
    public CancellationToken Closing => _closing.Token;

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken)
    {
        _closing.Cancel();
        return Task.CompletedTask;
    }

    public void Dispose() => _closing.Dispose();
}

/// <summary>gRPC health whose Watch calls end (OK, after the latest status) when <see cref="StreamCloser"/> closes streams.</summary>
public sealed class ClosingHealthService(StreamCloser closer) : HealthServiceImpl
{
    public override async Task Watch(HealthCheckRequest request, IServerStreamWriter<HealthCheckResponse> responseStream, ServerCallContext context)
    {
        using var ended = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, closer.Closing);
        await base.Watch(request, responseStream, new CancellableCallContext(context, ended.Token)).ConfigureAwait(false);
    }

    /// <summary>The call's context with another cancellation token: the base Watch ends when that token is cancelled.</summary>
    private sealed class CancellableCallContext(ServerCallContext inner, CancellationToken cancellationToken) : ServerCallContext
    {
        protected override string MethodCore => inner.Method;
        protected override string HostCore => inner.Host;
        protected override string PeerCore => inner.Peer;
        protected override DateTime DeadlineCore => inner.Deadline;
        protected override Metadata RequestHeadersCore => inner.RequestHeaders;
        protected override CancellationToken CancellationTokenCore => cancellationToken;
        protected override Metadata ResponseTrailersCore => inner.ResponseTrailers;

        protected override Status StatusCore
        {
            get => inner.Status;
            set => inner.Status = value;
        }

        protected override WriteOptions? WriteOptionsCore
        {
            get => inner.WriteOptions;
            set => inner.WriteOptions = value;
        }

        protected override AuthContext AuthContextCore => inner.AuthContext;
        protected override IDictionary<object, object> UserStateCore => inner.UserState;

        protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) =>
            inner.CreatePropagationToken(options);

        protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => inner.WriteResponseHeadersAsync(responseHeaders);
    }
}
