using Grpc.Core;
using XRay.Contracts.V1;

namespace XRay.Client;

/// <summary>
/// One ClassifyStream call with many requests in flight: each <see cref="ClassifyAsync"/> completes when the
/// response with its request_id arrives (responses may come back in any order).
/// </summary>
public sealed class ClassifyStreamSession : StreamSession<ClassifyRequest, ClassifyResponse, ClassifyResponse>
{
    internal ClassifyStreamSession(AsyncDuplexStreamingCall<ClassifyRequest, ClassifyResponse> call)
        : base(call, "request_id")
    {
    }

    /// <summary>Sends a request (a request_id is assigned if empty); a per-request error becomes an <see cref="RpcException"/>.</summary>
    public Task<ClassifyResponse> ClassifyAsync(ClassifyRequest request, CancellationToken cancellationToken = default) =>
        SendAsync(request, cancellationToken);

    private protected override string IdOf(ClassifyRequest request) => request.RequestId;

    private protected override void SetId(ClassifyRequest request, string id) => request.RequestId = id;

    private protected override (string? Id, ClassifyResponse? Result, Exception? Error) Answer(ClassifyResponse response) =>
        response.Error is { } error
            ? (response.RequestId, null, new RpcException(new Status((StatusCode)error.Code, error.Message)))
            : (response.RequestId, response, null);
}
