using System.Diagnostics;
using Grpc.Core;
using Microsoft.Extensions.Options;
using XRay.Contracts.V1;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>
/// What the gRPC endpoint maps for <c>xray.v1.Classifier</c>: <see cref="ClassifierService"/> behind the transport bounds.
/// Its methods are bound by <see cref="ClassifierMethodProvider"/> with marshallers that refuse malformed messages
/// precisely; every call's images count against its connection's share (<see cref="ConnectionAdmission"/>); when the
/// server stops, open streams run no new requests (those still arriving are refused in-band UNAVAILABLE), their
/// requests are answered, and they end UNAVAILABLE once their clients stop sending.
/// </summary>
public sealed partial class ClassifierEndpoint(
    ClassifierService service,
    ConnectionAdmission admission,
    StreamCloser closer,
    XRayMetrics metrics,
    LogBudget logBudget,
    ILogger<ClassifierEndpoint> logger)
{
    public async Task<ClassifyResponse> Classify(ClassifyRequest request, ServerCallContext context)
    {
        string connection = ConnectionOf(context);
        int images = ImageCount(request);
        if (!admission.TryAcquire(connection, images))
        {
            metrics.RequestRejected(RejectionReasons.QueueFull);
            metrics.RecordRequest(ClassifierMethods.Classify, null, StatusCode.ResourceExhausted, Stopwatch.GetTimestamp());
            string detail = $"This connection already has {admission.InFlight(connection)} images in flight; at most {admission.Limit} " +
                            "per connection (Transport:MaxImagesInFlightPerConnection). Retry later or spread calls over connections.";
            if (logBudget.TryTake(out long skipped)) LogConnectionFull(logger, LogText.Quote(request.RequestId), images, skipped);
            throw new RpcException(new Status(StatusCode.ResourceExhausted, detail));
        }
        try
        {
            return await service.Classify(request, context).ConfigureAwait(false);
        }
        finally
        {
            admission.Release(connection, images);
        }
    }

    public async Task ClassifyStream(
        IAsyncStreamReader<ClassifyRequest> requestStream,
        IServerStreamWriter<ClassifyResponse> responseStream,
        ServerCallContext context)
    {
        string connection = ConnectionOf(context);
        var shares = new StreamShare(admission, connection);
        var writer = new ReleasingWriter(responseStream, shares);
        var reader = new AdmittingReader(requestStream, shares, closer, request => RefuseAsync(request, writer, context.CancellationToken));
        // Counted open until the call's response, trailers included, is complete: stopping Kestrel before a stream's
        // trailers are sent would lose them.
        StreamCloser.Ticket open = closer.Track(connection);
        context.GetHttpContext().Response.RegisterForDispose(open);
        try
        {
            await service.ClassifyStream(reader, writer, context).ConfigureAwait(false);
        }
        finally
        {
            // Responses not written (the call was cancelled) give their images back here.
            shares.ReleaseAll();
        }
        if (closer.Closing.IsCancellationRequested)
        {
            await open.EndTogetherAsync(context.CancellationToken).ConfigureAwait(false);
        }
        if (reader.Closed || reader.Refused)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, StreamCloser.EndedDetail));
        }
    }

    /// <summary>Answers a request that came after shutdown began: UNAVAILABLE in-band, not run.</summary>
    private Task RefuseAsync(ClassifyRequest request, ReleasingWriter writer, CancellationToken cancellationToken)
    {
        metrics.RequestRejected(RejectionReasons.ShuttingDown);
        metrics.RecordRequest(ClassifierMethods.ClassifyStream, null, StatusCode.Unavailable, Stopwatch.GetTimestamp());
        var response = new ClassifyResponse
        {
            RequestId = request.RequestId,
            Error = new Error { Code = (int)StatusCode.Unavailable, Message = StreamCloser.RefusedDetail },
        };
        return writer.WriteUnheldAsync(response, cancellationToken);
    }

    public Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context) =>
        service.GetModelInfo(request, context);

    /// <summary>Images a request asks for, as admission counts them; the decoder checks the details.</summary>
    public static int ImageCount(ClassifyRequest request) => request.InputCase switch
    {
        ClassifyRequest.InputOneofCase.Tensor when request.Tensor.Shape.Count == 4 => (int)Math.Clamp(request.Tensor.Shape[0], 1, int.MaxValue),
        ClassifyRequest.InputOneofCase.Encoded => Math.Max(1, request.Encoded.Images.Count),
        _ => 1,
    };

    private static string ConnectionOf(ServerCallContext context) => context.GetHttpContext().Connection.Id;

    [LoggerMessage(EventId = 21, Level = LogLevel.Information,
        Message = "Request {RequestId} (Classify, {Images} images) refused: its connection's share of the queue is full ({Skipped} more refusals not logged before this one)")]
    private static partial void LogConnectionFull(ILogger logger, string requestId, int images, long skipped);

    /// <summary>The images one stream holds, by request_id, so that each response gives back its request's images.</summary>
    private sealed class StreamShare(ConnectionAdmission admission, string connection)
    {
        private readonly Lock _lock = new();
        private readonly Dictionary<string, Queue<int>> _byRequestId = new(StringComparer.Ordinal);

        public async Task AcquireAsync(ClassifyRequest request, CancellationToken cancellationToken)
        {
            int images = ImageCount(request);
            await admission.AcquireAsync(connection, images, cancellationToken).ConfigureAwait(false);
            lock (_lock)
            {
                if (!_byRequestId.TryGetValue(request.RequestId, out Queue<int>? held))
                {
                    _byRequestId[request.RequestId] = held = new Queue<int>(1);
                }
                held.Enqueue(images);
            }
        }

        public void Release(string requestId)
        {
            int images;
            lock (_lock)
            {
                if (!_byRequestId.TryGetValue(requestId, out Queue<int>? held))
                {
                    return;
                }
                images = held.Dequeue();
                if (held.Count == 0)
                {
                    _byRequestId.Remove(requestId);
                }
            }
            admission.Release(connection, images);
        }

        /// <summary>Whether a request of this stream is still to be answered.</summary>
        public bool Holding
        {
            get
            {
                lock (_lock) return _byRequestId.Count > 0;
            }
        }

        public void ReleaseAll()
        {
            int images;
            lock (_lock)
            {
                images = _byRequestId.Values.Sum(held => held.Sum());
                _byRequestId.Clear();
            }
            if (images > 0)
            {
                admission.Release(connection, images);
            }
        }
    }

    /// <summary>
    /// Hands requests to the service once their images are admitted. Once the server is closing streams, requests still
    /// arriving are refused (answered in-band, not handed on) and the request stream ends when the client stops sending
    /// (<see cref="StreamCloser.ReadAsync"/>), so an idle stream does not hold shutdown open.
    /// </summary>
    private sealed class AdmittingReader(
        IAsyncStreamReader<ClassifyRequest> inner, StreamShare shares, StreamCloser closer, Func<ClassifyRequest, Task> refuse)
        : IAsyncStreamReader<ClassifyRequest>
    {
        private ClassifyRequest? _current;

        public ClassifyRequest Current => _current ?? throw new InvalidOperationException("MoveNext has not returned true.");

        /// <summary>The stream was ended by shutdown rather than by the client.</summary>
        public bool Closed { get; private set; }

        /// <summary>A request was refused because the server is shutting down.</summary>
        public bool Refused { get; private set; }

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            while (true)
            {
                switch (await closer.ReadAsync(inner, () => shares.Holding, cancellationToken).ConfigureAwait(false))
                {
                    case StreamRead.Ended:
                        return false;
                    case StreamRead.Closed:
                        Closed = true;
                        return false;
                    case StreamRead.Refused:
                        Refused = true;
                        await refuse(inner.Current).ConfigureAwait(false);
                        continue;
                }
                ClassifyRequest request = inner.Current;
                await shares.AcquireAsync(request, cancellationToken).ConfigureAwait(false);
                _current = request;
                return true;
            }
        }
    }

    private sealed class ReleasingWriter(IServerStreamWriter<ClassifyResponse> inner, StreamShare shares) : IServerStreamWriter<ClassifyResponse>
    {
        public WriteOptions? WriteOptions
        {
            get => inner.WriteOptions;
            set => inner.WriteOptions = value;
        }

        // The service's responses and the refusals written while reading must not overlap on the stream.
        private readonly SemaphoreSlim _writing = new(1, 1);

        public Task WriteAsync(ClassifyResponse message) => WriteAsync(message, CancellationToken.None);

        public async Task WriteAsync(ClassifyResponse message, CancellationToken cancellationToken)
        {
            // Answered: the images leave the connection's share whether or not the write gets through.
            shares.Release(message.RequestId);
            await WriteUnheldAsync(message, cancellationToken).ConfigureAwait(false);
        }

        /// <summary>Writes a response whose request holds no share (it was refused, not admitted).</summary>
        public async Task WriteUnheldAsync(ClassifyResponse message, CancellationToken cancellationToken)
        {
            await _writing.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                await inner.WriteAsync(message, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                _writing.Release();
            }
        }
    }
}
