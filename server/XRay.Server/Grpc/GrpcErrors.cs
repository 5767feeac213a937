using Grpc.Core;
using XRay.Batching;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>The model is still loading or warming up, or was never loaded.</summary>
public sealed class ModelNotReadyException()
    : Exception("The model is loading or warming up; retry shortly (health reports NOT_SERVING until ready).");

/// <summary>The one place where failures become gRPC statuses. Model failures are logged, not leaked.</summary>
internal static class GrpcErrors
{
    public static Status ToStatus(Exception exception, ServerCallContext context) => exception switch
    {
        RpcException rpc => rpc.Status,
        InvalidRequestException invalid => new Status(StatusCode.InvalidArgument, invalid.Message),
        ModelNotReadyException notReady => new Status(StatusCode.Unavailable, notReady.Message),
        BatchRejectedException rejected => Rejected(rejected.Reason, rejected.Message),
        OperationCanceledException when context.Deadline <= DateTime.UtcNow => new Status(StatusCode.DeadlineExceeded, "The deadline passed."),
        OperationCanceledException => new Status(StatusCode.Cancelled, "The call was cancelled."),
        BatchExecutionException => new Status(StatusCode.Internal, "The model failed to classify the batch this request ran in."),
        _ => new Status(StatusCode.Internal, "Internal error."),
    };

    /// <summary>
    /// Why a request that failed with <paramref name="status"/> was turned away uncomputed (a <see cref="RejectionReasons"/>
    /// value), or null when it was not rejected but failed in the model or the server.
    /// </summary>
    public static string? RejectionReasonOf(Exception exception, StatusCode status) => exception switch
    {
        InvalidRequestException => RejectionReasons.InvalidInput,
        ModelNotReadyException => RejectionReasons.NotReady,
        BatchRejectedException rejected => ReasonName(rejected.Reason),
        OperationCanceledException => status == StatusCode.DeadlineExceeded ? RejectionReasons.Deadline : RejectionReasons.Cancelled,
        _ => null,
    };

    /// <summary>The status of a request the batcher refused or dropped for <paramref name="reason"/>.</summary>
    public static Status Rejected(RejectionReason reason, string message) => reason switch
    {
        RejectionReason.QueueFull => new Status(StatusCode.ResourceExhausted, message),
        RejectionReason.DeadlineUnmeetable => new Status(StatusCode.ResourceExhausted, $"{message}. Retry with a longer deadline, later, or on another server."),
        RejectionReason.DeadlineExceeded => new Status(StatusCode.DeadlineExceeded, "The deadline passed while the request was queued."),
        _ => new Status(StatusCode.Unavailable, "The server is shutting down."),
    };

    /// <summary>The <see cref="RejectionReasons"/> value of a batcher rejection.</summary>
    public static string ReasonName(RejectionReason reason) => reason switch
    {
        RejectionReason.QueueFull => RejectionReasons.QueueFull,
        RejectionReason.DeadlineUnmeetable => RejectionReasons.DeadlineUnmeetable,
        RejectionReason.DeadlineExceeded => RejectionReasons.Deadline,
        _ => RejectionReasons.ShuttingDown,
    };

    public static ModelNotReadyException NotReady() => new();

    public static bool IsServerFault(StatusCode code) => code is StatusCode.Internal or StatusCode.Unknown;

    /// <summary>Statuses that mark a server span as failed (OpenTelemetry's gRPC conventions); the others are the caller's doing.</summary>
    public static bool IsServerSpanError(StatusCode code) => code is StatusCode.Unknown or StatusCode.DeadlineExceeded
        or StatusCode.Unimplemented or StatusCode.Internal or StatusCode.Unavailable or StatusCode.DataLoss;
}
