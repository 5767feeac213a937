using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Grpc.Core;

namespace XRay.Server.Grpc;

/// <summary>
/// Reads a gRPC request body for grpc-dotnet and checks what it cannot report precisely: each message's 5-byte prefix
/// (compressed flag 0 or 1, length within the limit) as soon as it arrives and before the message is buffered, a body
/// that ends inside a message, extra data after a unary call's message, and a message that takes longer than the read
/// timeout to arrive. Each is thrown as an <see cref="RpcException"/> (INVALID_ARGUMENT, RESOURCE_EXHAUSTED or
/// DEADLINE_EXCEEDED), which grpc-dotnet turns into the call's status. Relies on grpc-dotnet consuming whole messages
/// only, so that unconsumed data always starts at a message prefix.
/// </summary>
internal sealed class GrpcFrameGuard(
    PipeReader inner,
    int maxMessageBytes,
    TimeSpan readTimeout,
    bool singleMessage,
    TimeProvider time,
    Action<StatusCode, string> onRefused) : PipeReader
{
    public const int PrefixLength = 5;

    private ReadOnlySequence<byte> _returned;
    private long? _messageStarted;
    private int _messagesConsumed;

    public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        ReadResult result;
        try
        {
            result = _messageStarted is null
                ? await inner.ReadAsync(cancellationToken).ConfigureAwait(false)
                : await ReadWithinTimeoutAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (BadHttpRequestException ex) when (ex.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw Refuse(StatusCode.ResourceExhausted, $"The request body exceeds {maxMessageBytes + PrefixLength} bytes (Serving:MaxReceiveMessageBytes plus the 5-byte prefix).");
        }
        catch (BadHttpRequestException ex) when (ex.StatusCode == StatusCodes.Status408RequestTimeout)
        {
            throw Refuse(StatusCode.DeadlineExceeded, "The request body arrived slower than the minimum rate (Transport:MinRequestBodyBytesPerSecond).");
        }
        Check(result);
        _returned = result.Buffer;
        return result;
    }

    private async ValueTask<ReadResult> ReadWithinTimeoutAsync(CancellationToken cancellationToken)
    {
        TimeSpan left = readTimeout - time.GetElapsedTime(_messageStarted!.Value);
        if (left <= TimeSpan.Zero)
        {
            throw TimedOut();
        }
        using var timeout = new CancellationTokenSource(left, time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            return await inner.ReadAsync(linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw TimedOut();
        }
    }

    private void Check(ReadResult result)
    {
        ReadOnlySequence<byte> buffer = result.Buffer;
        if (buffer.IsEmpty)
        {
            if (singleMessage && result.IsCompleted && _messagesConsumed == 0)
            {
                throw Refuse(StatusCode.InvalidArgument, "The request has no message.");
            }
            return;
        }
        if (singleMessage && _messagesConsumed > 0)
        {
            throw Refuse(StatusCode.InvalidArgument, "A unary call carries exactly one message; the request has more data after it.");
        }
        if (buffer.Length < PrefixLength)
        {
            if (result.IsCompleted)
            {
                throw Refuse(StatusCode.InvalidArgument, $"The request ends inside a message prefix ({buffer.Length} of 5 bytes).");
            }
            return;
        }

        Span<byte> prefix = stackalloc byte[PrefixLength];
        buffer.Slice(0, PrefixLength).CopyTo(prefix);
        if (prefix[0] > 1)
        {
            throw Refuse(StatusCode.InvalidArgument, $"The message prefix has compressed flag {prefix[0]}; it must be 0 or 1.");
        }
        uint length = BinaryPrimitives.ReadUInt32BigEndian(prefix[1..]);
        if (length > maxMessageBytes)
        {
            throw Refuse(StatusCode.ResourceExhausted, $"The message is {length} bytes; at most {maxMessageBytes} are accepted (Serving:MaxReceiveMessageBytes).");
        }
        if (result.IsCompleted && buffer.Length < PrefixLength + length)
        {
            throw Refuse(StatusCode.InvalidArgument, $"The request ends inside a message ({buffer.Length - PrefixLength} of {length} bytes).");
        }
        if (singleMessage && buffer.Length > PrefixLength + length)
        {
            throw Refuse(StatusCode.InvalidArgument, "A unary call carries exactly one message; the request has more data after it.");
        }
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        long consumedBytes = _returned.Slice(0, consumed).Length;
        bool pending = consumedBytes < _returned.Length;
        if (consumedBytes > 0)
        {
            _messagesConsumed++;
            // The next message's clock starts when its first byte is seen.
            _messageStarted = null;
        }
        if (pending && _messageStarted is null)
        {
            _messageStarted = time.GetTimestamp();
        }
        _returned = default;
        inner.AdvanceTo(consumed, examined);
    }

    public override bool TryRead(out ReadResult result)
    {
        if (!inner.TryRead(out result))
        {
            return false;
        }
        Check(result);
        _returned = result.Buffer;
        return true;
    }

    public override void CancelPendingRead() => inner.CancelPendingRead();

    public override void Complete(Exception? exception = null) => inner.Complete(exception);

    private RpcException TimedOut() => Refuse(StatusCode.DeadlineExceeded,
        $"A message did not arrive within {readTimeout.TotalSeconds:0} s of its first byte (Transport:MessageReadTimeoutSeconds).");

    private RpcException Refuse(StatusCode code, string detail)
    {
        onRefused(code, detail);
        return new RpcException(new Status(code, detail));
    }
}
