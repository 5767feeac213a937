using Grpc.Core;
using Microsoft.Extensions.Options;
using XRay.Batching;
using XRay.Contracts.V1;
using XRay.Server.Model;

namespace XRay.Server.Grpc;

/// <summary>xray.v1.ModelAdmin: model swaps while serving. Mapped on the Admin endpoint only (<see cref="Hosting.AdminEndpoint"/>).</summary>
public sealed class ModelAdminService(ModelHost host, IOptions<BatchingOptions> batchingOptions, TimeProvider timeProvider)
    : ModelAdmin.ModelAdminBase
{
    public override async Task<LoadModelResponse> LoadModel(LoadModelRequest request, ServerCallContext context)
    {
        long started = timeProvider.GetTimestamp();
        try
        {
            (ServedModel current, ServedModel previous) = await host
                .SwapAsync(request.Path.Length == 0 ? null : request.Path, context.CancellationToken)
                .ConfigureAwait(false);
            return new LoadModelResponse
            {
                Model = ModelInfoFactory.Create(current, batchingOptions.Value),
                PreviousName = previous.Manifest.Name,
                PreviousVersion = previous.Manifest.Version,
                LoadSeconds = timeProvider.GetElapsedTime(started).TotalSeconds,
            };
        }
        catch (ModelSwapException ex)
        {
            // The caller is an operator on the admin endpoint: the load error (a missing file, a bad manifest) is the answer.
            StatusCode code = ex.Reason switch
            {
                ModelSwapException.Failure.Busy => StatusCode.Aborted,
                ModelSwapException.Failure.NotServing => StatusCode.Unavailable,
                _ => StatusCode.FailedPrecondition,
            };
            throw new RpcException(new Status(code, ex.Message));
        }
    }
}
