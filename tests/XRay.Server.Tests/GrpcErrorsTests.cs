using Grpc.Core;
using XRay.Batching;
using XRay.Server.Grpc;
using XRay.Server.Telemetry;

namespace XRay.Server.Tests;

/// <summary>How failures become the rejection reasons and status names that metrics and dashboards show.</summary>
public sealed class GrpcErrorsTests
{
    public static TheoryData<Exception, StatusCode, string?> Reasons => new()
    {
        { new InvalidRequestException("bad shape"), StatusCode.InvalidArgument, RejectionReasons.InvalidInput },
        { new ModelNotReadyException(), StatusCode.Unavailable, RejectionReasons.NotReady },
        { new BatchRejectedException(RejectionReason.QueueFull, "full"), StatusCode.ResourceExhausted, RejectionReasons.QueueFull },
        { new BatchRejectedException(RejectionReason.ShuttingDown, "stopping"), StatusCode.Unavailable, RejectionReasons.ShuttingDown },
        { new BatchRejectedException(RejectionReason.DeadlineExceeded, "late"), StatusCode.DeadlineExceeded, RejectionReasons.Deadline },
        { new OperationCanceledException(), StatusCode.DeadlineExceeded, RejectionReasons.Deadline },
        { new OperationCanceledException(), StatusCode.Cancelled, RejectionReasons.Cancelled },
        { new BatchExecutionException("batch failed", new InvalidOperationException()), StatusCode.Internal, null },
        { new InvalidOperationException(), StatusCode.Internal, null },
    };

    [Theory]
    [MemberData(nameof(Reasons))]
    public void RejectionReasonOf_NamesWhyARequestWasTurnedAway_AndNullForFaults(Exception exception, StatusCode status, string? reason) =>
        Assert.Equal(reason, GrpcErrors.RejectionReasonOf(exception, status));

    [Theory]
    [InlineData(StatusCode.OK, "OK")]
    [InlineData(StatusCode.Cancelled, "CANCELLED")]
    [InlineData(StatusCode.InvalidArgument, "INVALID_ARGUMENT")]
    [InlineData(StatusCode.DeadlineExceeded, "DEADLINE_EXCEEDED")]
    [InlineData(StatusCode.ResourceExhausted, "RESOURCE_EXHAUSTED")]
    [InlineData(StatusCode.Internal, "INTERNAL")]
    [InlineData(StatusCode.Unavailable, "UNAVAILABLE")]
    [InlineData(StatusCode.Unauthenticated, "UNAUTHENTICATED")]
    public void StatusName_IsTheCanonicalGrpcName(StatusCode code, string name) => Assert.Equal(name, XRayMetrics.StatusName(code));
}
