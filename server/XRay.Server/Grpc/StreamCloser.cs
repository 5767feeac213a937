using Grpc.Core;
using Grpc.Health.V1;
using Grpc.HealthCheck;
using XRay.Server.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>
/// Ends long-lived streams first thing when the server stops, so that Kestrel's graceful shutdown (which waits for
/// open calls) does not wait out the host's timeout for clients that keep idle streams open. Health turns NOT_SERVING;
/// ClassifyStream calls stop reading and end (UNAVAILABLE) once their requests are answered; health Watch calls end
/// once they have sent NOT_SERVING. Only then do the model host and Kestrel stop.
/// </summary>
public sealed class StreamCloser(IHostApplicationLifetime lifetime) : IHostedLifecycleService, IDisposable
{
    private readonly CancellationTokenSource _closing = new();
    private readonly TaskCompletionSource _allEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private CancellationTokenRegistration _stopping;
    private int _open;

    /// <summary>Cancelled when streams should end.</summary>
    public CancellationToken Closing => _closing.Token;

    /// <summary>Counts a stream as open until disposed: stopping waits for it.</summary>
    public IDisposable Track()
    {
        Interlocked.Increment(ref _open);
        return new Tracked(this);
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _stopping = lifetime.ApplicationStopping.Register(Close);
        return Task.CompletedTask;
    }

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>
    /// Runs before any hosted service, Kestrel included, is stopped: streams are closed and waited for here, because a
    /// stream that ends after Kestrel has begun its graceful close (GOAWAY) loses its trailers and holds the close.
    /// </summary>
    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        Close();
        try
        {
            await _allEnded.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        Close();
        return Task.CompletedTask;
    }

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private void Close()
    {
        _closing.Cancel();
        if (Volatile.Read(ref _open) == 0) _allEnded.TrySetResult();
    }

    public void Dispose()
    {
        _stopping.Dispose();
        _closing.Dispose();
    }

    private sealed class Tracked(StreamCloser closer) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0
                && Interlocked.Decrement(ref closer._open) == 0 && closer._closing.IsCancellationRequested)
            {
                closer._allEnded.TrySetResult();
            }
        }
    }
}

/// <summary>
/// gRPC health whose Watch calls end (OK) when <see cref="StreamCloser"/> closes streams, as soon as the watcher has been
/// sent a status other than SERVING: the NOT_SERVING of a draining server is delivered before the stream ends.
/// </summary>
public sealed class ClosingHealthService : HealthServiceImpl
{
    private readonly StreamCloser _closer;

    public ClosingHealthService(StreamCloser closer, XRayMetrics metrics)
    {
        _closer = closer;
        // Closing is the first step of stopping, before the model host drains: report NOT_SERVING from here on.
        closer.Closing.Register(() =>
        {
            SetStatus("", HealthCheckResponse.Types.ServingStatus.NotServing);
            SetStatus(ModelHost.ServiceName, HealthCheckResponse.Types.ServingStatus.NotServing);
            metrics.SetReady(false);
        });
    }

    public override async Task Watch(HealthCheckRequest request, IServerStreamWriter<HealthCheckResponse> responseStream, ServerCallContext context)
    {
        StreamCloser closer = _closer;
        using IDisposable open = closer.Track();
        using var ended = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken);
        var writer = new ObservingWriter(responseStream, () =>
        {
            if (closer.Closing.IsCancellationRequested) ended.Cancel();
        });
        using CancellationTokenRegistration closing = closer.Closing.Register(() =>
        {
            if (writer.Sent is not (null or HealthCheckResponse.Types.ServingStatus.Serving)) ended.Cancel();
        });
        await base.Watch(request, writer, new CancellableCallContext(context, ended.Token)).ConfigureAwait(false);
    }

    /// <summary>Remembers the last status written and calls back when it is not SERVING.</summary>
    private sealed class ObservingWriter(IServerStreamWriter<HealthCheckResponse> inner, Action notServingSent) : IServerStreamWriter<HealthCheckResponse>
    {
        private int _sent = -1;

        public HealthCheckResponse.Types.ServingStatus? Sent =>
            Volatile.Read(ref _sent) is >= 0 and var sent ? (HealthCheckResponse.Types.ServingStatus)sent : null;

        public WriteOptions? WriteOptions
        {
            get => inner.WriteOptions;
            set => inner.WriteOptions = value;
        }

        public async Task WriteAsync(HealthCheckResponse message)
        {
            await inner.WriteAsync(message).ConfigureAwait(false);
            Volatile.Write(ref _sent, (int)message.Status);
            if (message.Status != HealthCheckResponse.Types.ServingStatus.Serving) notServingSent();
        }
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
