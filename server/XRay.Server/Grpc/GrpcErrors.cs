using Grpc.Core;
using XRay.Batching;

namespace XRay.Server.Grpc;

/// <summary>The one place where failures become gRPC statuses. Model failures are logged, not leaked.</summary>
internal static class GrpcErrors
{
    public static Status ToStatus(Exception exception, ServerCallContext context) => exception switch
    {
        RpcException rpc => rpc.Status,
        InvalidRequestException invalid => new Status(StatusCode.InvalidArgument, invalid.Message),
        BatchRejectedException { Reason: RejectionReason.QueueFull } rejected => new Status(StatusCode.ResourceExhausted, rejected.Message),
        BatchRejectedException { Reason: RejectionReason.ShuttingDown } => new Status(StatusCode.Unavailable, "The server is shutting down."),
        BatchRejectedException { Reason: RejectionReason.DeadlineExceeded } => new Status(StatusCode.DeadlineExceeded, "The deadline passed while the request was queued."),
        OperationCanceledException when context.Deadline <= DateTime.UtcNow => new Status(StatusCode.DeadlineExceeded, "The deadline passed."),
        OperationCanceledException => new Status(StatusCode.Cancelled, "The call was cancelled."),
        BatchExecutionException => new Status(StatusCode.Internal, "The model failed to classify the batch this request ran in."),
        _ => new Status(StatusCode.Internal, "Internal error."),
    };

    public static RpcException NotReady() =>
        new(new Status(StatusCode.Unavailable, "The model is loading or warming up; retry shortly (health reports NOT_SERVING until ready)."));

    public static bool IsServerFault(StatusCode code) => code is StatusCode.Internal or StatusCode.Unknown;
}
