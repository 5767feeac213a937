using Grpc.Core;
using Grpc.Health.V1;
using Grpc.HealthCheck;
using XRay.Server.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>
/// Ends long-lived streams first thing when the server stops, so that Kestrel's graceful shutdown (which waits for
/// open calls) does not wait out the host's timeout for clients that keep idle streams open. Health turns NOT_SERVING;
/// ClassifyStream and ModelStreamInfer calls stop running new requests (those still arriving are refused in-band
/// UNAVAILABLE, see <see cref="ReadAsync"/>) and end (UNAVAILABLE) once their requests are answered and their clients
/// have stopped sending; health Watch calls end once they have sent NOT_SERVING. Only then do the model host and Kestrel stop.
/// </summary>
public sealed class StreamCloser(IHostApplicationLifetime lifetime, TimeProvider time) : IHostedLifecycleService, IDisposable
{
    /// <summary>
    /// Once closing, a stream's read that brings no request within this long ends the stream's reading: an idle stream
    /// ends this soon, a client still sending (and refused) gets this long to see a refusal and stop.
    /// </summary>
    public static readonly TimeSpan QuietPeriod = TimeSpan.FromMilliseconds(500);

    /// <summary>How long after closing began streams may go on reading (and refusing) requests at most.</summary>
    public static readonly TimeSpan DrainBound = TimeSpan.FromSeconds(3);

    /// <summary>The in-band error of a request refused because the server is shutting down.</summary>
    public const string RefusedDetail = "The server is shutting down: this request was not run; send it to another server.";

    /// <summary>The status detail of a stream ended because the server is shutting down.</summary>
    public const string EndedDetail =
        "The server is shutting down: every request read on this stream was answered or refused; send the rest to another server.";

    private readonly CancellationTokenSource _closing = new();
    private readonly CancellationTokenSource _drained = new(Timeout.InfiniteTimeSpan, time);
    private readonly TaskCompletionSource _allEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private CancellationTokenRegistration _stopping;
    private readonly Dictionary<string, Group> _groups = new(StringComparer.Ordinal);
    private int _open;

    /// <summary>Cancelled when streams should end.</summary>
    public CancellationToken Closing => _closing.Token;

    /// <summary>
    /// Reads a stream's next request. While the server runs, as <paramref name="requests"/> does. Once closing, the
    /// stream is still read, so that a client writing on it never has its stream ended under its writes (HTTP/2 clients
    /// can then lose the whole connection, and with it other streams' answers): a request read then is
    /// <see cref="StreamRead.Refused"/>, to be answered in-band UNAVAILABLE without being run; reading ends
    /// (<see cref="StreamRead.Closed"/>) when no request comes within <see cref="QuietPeriod"/> of the stream having
    /// nothing left to answer (<paramref name="answering"/> false: a client waiting for answers writes again when they
    /// come), or when <see cref="DrainBound"/> has passed since closing began.
    /// </summary>
    public async Task<StreamRead> ReadAsync<T>(IAsyncStreamReader<T> requests, Func<bool> answering, CancellationToken cancellationToken)
    {
        if (_drained.IsCancellationRequested)
        {
            return StreamRead.Closed;
        }
        using var read = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _drained.Token);
        using var quiet = new CancellationTokenSource();
        // Runs at once if closing has begun; the watch ends with this read.
        using (Closing.Register(() => _ = EndWhenQuietAsync(read, answering, quiet.Token)))
        {
            try
            {
                if (!await requests.MoveNext(read.Token).ConfigureAwait(false))
                {
                    return StreamRead.Ended;
                }
            }
            catch (OperationCanceledException) when (Closing.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                return StreamRead.Closed;
            }
            finally
            {
                quiet.Cancel();
            }
        }
        return Closing.IsCancellationRequested ? StreamRead.Refused : StreamRead.Request;
    }

    /// <summary>Cancels <paramref name="read"/> once a whole <see cref="QuietPeriod"/> has passed with nothing being answered.</summary>
    private async Task EndWhenQuietAsync(CancellationTokenSource read, Func<bool> answering, CancellationToken stop)
    {
        try
        {
            do
            {
                await Task.Delay(QuietPeriod, time, stop).ConfigureAwait(false);
            }
            while (answering());
            read.Cancel();
        }
        catch (OperationCanceledException)
        {
            // The read completed first.
        }
        catch (ObjectDisposedException)
        {
            // The read completed and its source was disposed as the period ended.
        }
    }

    /// <summary>
    /// Counts a stream as open until disposed: stopping waits for it. A stream of a client connection names it, so that
    /// the connection's streams can end together when closing (<see cref="Ticket.EndTogetherAsync"/>).
    /// </summary>
    public Ticket Track(string? connection = null)
    {
        Interlocked.Increment(ref _open);
        Group? group = null;
        if (connection is not null)
        {
            lock (_groups)
            {
                if (!_groups.TryGetValue(connection, out group))
                {
                    _groups[connection] = group = new Group();
                }
                group.Open++;
            }
        }
        return new Ticket(this, connection, group);
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
        // The host signals ApplicationStopping only after every StoppingAsync; signalled here, the model host stops
        // admitting (its drain) in the same step that turns health NOT_SERVING, so no request sent after a client has
        // seen NOT_SERVING is queued. Signalling it again later does nothing.
        lifetime.StopApplication();
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
        if (!_closing.IsCancellationRequested)
        {
            _drained.CancelAfter(DrainBound);
        }
        _closing.Cancel();
        if (Volatile.Read(ref _open) == 0) _allEnded.TrySetResult();
    }

    public void Dispose()
    {
        _stopping.Dispose();
        _closing.Dispose();
        _drained.Dispose();
    }

    /// <summary>The open streams of one client connection; guarded by the closer's group table.</summary>
    internal sealed class Group
    {
        public int Open;
        public int Ready;
        public readonly TaskCompletionSource AllReady = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void CompleteIfAllReady()
        {
            if (Open > 0 && Ready >= Open) AllReady.TrySetResult();
        }
    }

    /// <summary>An open stream: disposed when it ends.</summary>
    public sealed class Ticket : IDisposable
    {
        private readonly StreamCloser _closer;
        private readonly string? _connection;
        private readonly Group? _group;
        private bool _ready;
        private int _disposed;

        internal Ticket(StreamCloser closer, string? connection, Group? group)
        {
            _closer = closer;
            _connection = connection;
            _group = group;
        }

        /// <summary>
        /// Waits, once this stream has nothing left to answer, until every other open stream of its connection has too,
        /// so that the connection's streams send their ends together. A client still sending when its stream ends may
        /// answer with a stream reset followed by more data, which the server takes as a connection error: that ends
        /// the connection, and every stream on it whose end had not been sent yet would lose it (INTERNAL).
        /// </summary>
        public Task EndTogetherAsync(CancellationToken cancellationToken)
        {
            if (_group is not { } group) return Task.CompletedTask;
            lock (_closer._groups)
            {
                if (!_ready)
                {
                    _ready = true;
                    group.Ready++;
                    group.CompleteIfAllReady();
                }
            }
            return group.AllReady.Task.WaitAsync(cancellationToken);
        }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            if (_group is { } group)
            {
                lock (_closer._groups)
                {
                    group.Open--;
                    if (_ready) group.Ready--;
                    if (group.Open == 0) _closer._groups.Remove(_connection!);
                    else group.CompleteIfAllReady();
                }
            }
            if (Interlocked.Decrement(ref _closer._open) == 0 && _closer._closing.IsCancellationRequested)
            {
                _closer._allEnded.TrySetResult();
            }
        }
    }
}

/// <summary>What <see cref="StreamCloser.ReadAsync"/> read.</summary>
public enum StreamRead
{
    /// <summary>A request, to be run.</summary>
    Request,

    /// <summary>A request that came after closing began: to be answered UNAVAILABLE in-band, not run.</summary>
    Refused,

    /// <summary>The client half-closed its side: no more requests.</summary>
    Ended,

    /// <summary>Closing ended the reading: the call is to end UNAVAILABLE once what it read is answered.</summary>
    Closed,
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
