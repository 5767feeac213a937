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
/// server stops, open streams stop being read, their requests are answered, and they end UNAVAILABLE.
/// </summary>
public sealed partial class ClassifierEndpoint(
    ClassifierService service,
    ConnectionAdmission admission,
    StreamCloser closer,
    XRayMetrics metrics,
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
            LogConnectionFull(logger, LogText.Quote(request.RequestId), images);
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
        var shares = new StreamShare(admission, ConnectionOf(context));
        var reader = new AdmittingReader(requestStream, shares, closer.Closing);
        using IDisposable open = closer.Track();
        try
        {
            await service.ClassifyStream(reader, new ReleasingWriter(responseStream, shares), context).ConfigureAwait(false);
        }
        finally
        {
            // Responses not written (the call was cancelled) give their images back here.
            shares.ReleaseAll();
        }
        if (reader.Closed)
        {
            throw new RpcException(new Status(StatusCode.Unavailable,
                "The server is shutting down: every request read on this stream was answered; send the rest to another server."));
        }
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
        Message = "Request {RequestId} (Classify, {Images} images) refused: its connection's share of the queue is full")]
    private static partial void LogConnectionFull(ILogger logger, string requestId, int images);

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
    /// Hands requests to the service once their images are admitted; ends the request stream when the server starts
    /// closing streams, so an idle stream does not hold shutdown open.
    /// </summary>
    private sealed class AdmittingReader(IAsyncStreamReader<ClassifyRequest> inner, StreamShare shares, CancellationToken closing)
        : IAsyncStreamReader<ClassifyRequest>
    {
        private ClassifyRequest? _current;

        public ClassifyRequest Current => _current ?? throw new InvalidOperationException("MoveNext has not returned true.");

        /// <summary>The stream was ended by shutdown rather than by the client.</summary>
        public bool Closed { get; private set; }

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (closing.IsCancellationRequested)
            {
                Closed = true;
                return false;
            }
            // Closing cancels the read itself, so no read is left pending on the request body when the call ends.
            using (var read = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, closing))
            {
                try
                {
                    if (!await inner.MoveNext(read.Token).ConfigureAwait(false))
                    {
                        return false;
                    }
                }
                catch (OperationCanceledException) when (closing.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
                {
                    Closed = true;
                    return false;
                }
            }
            ClassifyRequest request = inner.Current;
            await shares.AcquireAsync(request, cancellationToken).ConfigureAwait(false);
            _current = request;
            return true;
        }
    }

    private sealed class ReleasingWriter(IServerStreamWriter<ClassifyResponse> inner, StreamShare shares) : IServerStreamWriter<ClassifyResponse>
    {
        public WriteOptions? WriteOptions
        {
            get => inner.WriteOptions;
            set => inner.WriteOptions = value;
        }

        public Task WriteAsync(ClassifyResponse message) => WriteAsync(message, CancellationToken.None);

        public async Task WriteAsync(ClassifyResponse message, CancellationToken cancellationToken)
        {
            // Answered: the images leave the connection's share whether or not the write gets through.
            shares.Release(message.RequestId);
            await inner.WriteAsync(message, cancellationToken).ConfigureAwait(false);
        }
    }
}
