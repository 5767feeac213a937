using System.Diagnostics;
using System.Reflection;
using System.Threading.Channels;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.HealthCheck;
using Microsoft.Extensions.Options;
using XRay.Batching;
using XRay.Contracts.Inference;
using XRay.Contracts.V1;
using XRay.Model;
using XRay.Server.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>
/// The Open Inference Protocol (KServe v2) gRPC service, <c>inference.GRPCInferenceService</c>, beside xray.v1. Inference
/// requests are translated (<see cref="InferenceTensors"/>) and classified by <see cref="ClassifierService"/>: the same
/// admission before decoding, decode pool, batcher (a batch may mix both APIs), predictions, limits, metrics (labelled by
/// method), status conventions and logs. Each call's images count against its connection's share as xray.v1's do;
/// on shutdown streams run no new requests (those still arriving are refused in-band UNAVAILABLE) and end UNAVAILABLE
/// once their requests are answered and their clients stop sending. Readiness is the gRPC
/// health status, so it turns false while the model loads and while the server drains.
/// </summary>
public sealed partial class InferenceEndpoint(
    ClassifierService classifier,
    ModelHost host,
    HealthServiceImpl health,
    ConnectionAdmission admission,
    StreamCloser closer,
    TimeProvider timeProvider,
    IOptions<BatchingOptions> batchingOptions,
    IOptions<ServingOptions> servingOptions,
    XRayMetrics metrics,
    LogBudget logBudget,
    ILogger<InferenceEndpoint> logger)
{
    public const string ServerName = "xray-server";
    public const string StreamMessageSpanName = InferenceMethods.ModelStreamInfer + " message";

    /// <summary>Triton's names for the protocol extensions served here.</summary>
    public static readonly IReadOnlyList<string> Extensions = ["model_configuration", "statistics"];

    private static readonly string ServerVersion =
        typeof(InferenceEndpoint).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
        ?? typeof(InferenceEndpoint).Assembly.GetName().Version?.ToString() ?? "unknown";

    public Task<ServerLiveResponse> ServerLive(ServerLiveRequest request, ServerCallContext context) =>
        Answer<ServerLiveResponse>(InferenceMethods.ServerLive, context, () => (new ServerLiveResponse { Live = true }, null));

    public async Task<ServerReadyResponse> ServerReady(ServerReadyRequest request, ServerCallContext context)
    {
        bool ready = await IsServingAsync(context).ConfigureAwait(false);
        return await Answer<ServerReadyResponse>(InferenceMethods.ServerReady, context, () => (new ServerReadyResponse { Ready = ready }, null)).ConfigureAwait(false);
    }

    public async Task<ModelReadyResponse> ModelReady(ModelReadyRequest request, ServerCallContext context)
    {
        bool ready = await IsServingAsync(context).ConfigureAwait(false);
        return await Answer<ModelReadyResponse>(InferenceMethods.ModelReady, context, () =>
        {
            // Before the model is loaded its name is not known: not ready, rather than not found.
            if (host.Current is not { } model)
            {
                return (new ModelReadyResponse { Ready = false }, null);
            }
            CheckModel(request.Name, request.Version, model);
            return (new ModelReadyResponse { Ready = ready }, model.Manifest.Name);
        }).ConfigureAwait(false);
    }

    public Task<ServerMetadataResponse> ServerMetadata(ServerMetadataRequest request, ServerCallContext context) =>
        Answer<ServerMetadataResponse>(InferenceMethods.ServerMetadata, context, () =>
            (new ServerMetadataResponse { Name = ServerName, Version = ServerVersion, Extensions = { Extensions } }, null));

    public Task<ModelMetadataResponse> ModelMetadata(ModelMetadataRequest request, ServerCallContext context) =>
        Answer(InferenceMethods.ModelMetadata, context, () =>
        {
            ServedModel model = Served(request.Name, request.Version);
            return (InferenceModelDescription.Metadata(model), model.Manifest.Name);
        });

    public Task<ModelConfigResponse> ModelConfig(ModelConfigRequest request, ServerCallContext context) =>
        Answer(InferenceMethods.ModelConfig, context, () =>
        {
            ServedModel model = Served(request.Name, request.Version);
            return (new ModelConfigResponse { Config = InferenceModelDescription.Config(model, batchingOptions.Value) }, model.Manifest.Name);
        });

    public Task<ModelStatisticsResponse> ModelStatistics(ModelStatisticsRequest request, ServerCallContext context) =>
        Answer(InferenceMethods.ModelStatistics, context, () =>
        {
            // No name: every model, which is the one served.
            ServedModel model = request.Name.Length == 0 && request.Version.Length == 0
                ? host.Current ?? throw GrpcErrors.NotReady()
                : Served(request.Name, request.Version);
            var response = new ModelStatisticsResponse { ModelStats = { InferenceModelDescription.Statistics(model, metrics.Statistics.Read()) } };
            return (response, model.Manifest.Name);
        });

    public async Task<ModelInferResponse> ModelInfer(ModelInferRequest request, ServerCallContext context)
    {
        string connection = ConnectionOf(context);
        int images = InferenceTensors.ImageCount(request);
        if (!admission.TryAcquire(connection, images))
        {
            metrics.RequestRejected(RejectionReasons.QueueFull);
            metrics.RecordRequest(InferenceMethods.ModelInfer, null, StatusCode.ResourceExhausted, Stopwatch.GetTimestamp());
            string detail = $"This connection already has {admission.InFlight(connection)} images in flight; at most {admission.Limit} " +
                            "per connection (Transport:MaxImagesInFlightPerConnection). Retry later or spread calls over connections.";
            if (logBudget.TryTake(out long skipped)) LogConnectionFull(logger, LogText.Quote(request.Id), images, skipped);
            throw new RpcException(new Status(StatusCode.ResourceExhausted, detail));
        }
        try
        {
            return await InferAsync(request, context, InferenceMethods.ModelInfer).ConfigureAwait(false);
        }
        finally
        {
            admission.Release(connection, images);
        }
    }

    public async Task ModelStreamInfer(
        IAsyncStreamReader<ModelInferRequest> requestStream,
        IServerStreamWriter<ModelStreamInferResponse> responseStream,
        ServerCallContext context)
    {
        // As ClassifyStream: requests run concurrently, within the stream's window and the connection's share; one
        // writer loop serialises the responses; every request read is answered before the call ends.
        string connection = ConnectionOf(context);
        int maxInFlight = servingOptions.Value.StreamMaxInFlight;
        using var slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        // Counted open until the call's response, trailers included, is complete: stopping Kestrel before a stream's
        // trailers are sent would lose them.
        StreamCloser.Ticket open = closer.Track(connection);
        context.GetHttpContext().Response.RegisterForDispose(open);
        var responses = Channel.CreateUnbounded<ModelStreamInferResponse>(new UnboundedChannelOptions { SingleReader = true });
        Task writer = WriteAllAsync(responses.Reader, responseStream, context.CancellationToken);
        bool closed = false, refused = false;

        try
        {
            while (true)
            {
                // Once shutdown begins, requests still arriving are refused in-band and reading ends when the client
                // stops sending (StreamCloser.ReadAsync), rather than the stream being cut off under its writes.
                StreamRead read = await closer.ReadAsync(requestStream, () => slots.CurrentCount < maxInFlight, context.CancellationToken).ConfigureAwait(false);
                if (read == StreamRead.Ended)
                {
                    break;
                }
                if (read == StreamRead.Closed)
                {
                    closed = true;
                    break;
                }
                if (read == StreamRead.Refused)
                {
                    refused = true;
                    Refuse(requestStream.Current);
                    continue;
                }
                ModelInferRequest request = requestStream.Current;
                // A full window or a full connection share stops reading: HTTP/2 flow control pushes back on the client.
                await slots.WaitAsync(context.CancellationToken).ConfigureAwait(false);
                int images = InferenceTensors.ImageCount(request);
                try
                {
                    await admission.AcquireAsync(connection, images, context.CancellationToken).ConfigureAwait(false);
                }
                catch
                {
                    slots.Release();
                    throw;
                }
                _ = AnswerAsync(request, images);
            }
        }
        finally
        {
            for (int i = 0; i < maxInFlight; i++)
            {
                await slots.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            }
            responses.Writer.Complete();
        }
        await writer.ConfigureAwait(false);
        if (closer.Closing.IsCancellationRequested)
        {
            await open.EndTogetherAsync(context.CancellationToken).ConfigureAwait(false);
        }
        if (closed || refused)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, StreamCloser.EndedDetail));
        }

        void Refuse(ModelInferRequest request)
        {
            metrics.RequestRejected(RejectionReasons.ShuttingDown);
            metrics.RecordRequest(InferenceMethods.ModelStreamInfer, null, StatusCode.Unavailable, Stopwatch.GetTimestamp());
            responses.Writer.TryWrite(new ModelStreamInferResponse
            {
                ErrorMessage = $"{XRayMetrics.StatusName(StatusCode.Unavailable)}: {StreamCloser.RefusedDetail}",
                InferResponse = new ModelInferResponse { Id = request.Id, ModelName = request.ModelName, ModelVersion = request.ModelVersion },
            });
        }

        async Task AnswerAsync(ModelInferRequest request, int images)
        {
            using Activity? span = XRayTracing.Source.StartActivity(StreamMessageSpanName);
            ModelStreamInferResponse response;
            try
            {
                response = new ModelStreamInferResponse { InferResponse = await InferAsync(request, context, InferenceMethods.ModelStreamInfer).ConfigureAwait(false) };
            }
            catch (RpcException failed)
            {
                response = new ModelStreamInferResponse
                {
                    ErrorMessage = $"{XRayMetrics.StatusName(failed.StatusCode)}: {failed.Status.Detail}",
                    InferResponse = new ModelInferResponse { Id = request.Id, ModelName = request.ModelName, ModelVersion = request.ModelVersion },
                };
            }
            finally
            {
                admission.Release(connection, images);
            }
            // Written before the slot is returned, so the writer cannot be completed ahead of this response.
            responses.Writer.TryWrite(response);
            slots.Release();
        }
    }

    private static async Task WriteAllAsync(ChannelReader<ModelStreamInferResponse> responses, IServerStreamWriter<ModelStreamInferResponse> stream,
        CancellationToken cancellationToken)
    {
        await foreach (ModelStreamInferResponse response in responses.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            if (!cancellationToken.IsCancellationRequested)
            {
                await stream.WriteAsync(response, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>One inference request, counted and logged under <paramref name="method"/>; failures are RpcExceptions.</summary>
    private async Task<ModelInferResponse> InferAsync(ModelInferRequest request, ServerCallContext context, string method)
    {
        long started = metrics.RequestStart(method);
        try
        {
            ServedModel model = Served(request.ModelName, request.ModelVersion);
            InferenceTensors.Options options = InferenceTensors.ReadOptions(request);
            var preprocessing = model.Manifest.Preprocessing;
            ClassifyRequest classify = InferenceTensors.ToClassifyRequest(request, preprocessing.Channels, preprocessing.CropSize, batchingOptions.Value.MaxQueueSize);
            DateTimeOffset? deadline = options.Timeout is { } timeout ? timeProvider.GetUtcNow() + timeout : null;
            ClassifyResponse classified;
            try
            {
                classified = await classifier.ClassifyAsync(classify, context, deadline).ConfigureAwait(false);
            }
            catch (InvalidRequestException invalid)
            {
                throw InferenceTensors.InTermsOfInput(invalid);
            }
            ModelInferResponse response = InferenceTensors.ToResponse(request, classified, options);
            metrics.RequestStop(method, response.ModelName, StatusCode.OK, started);
            return response;
        }
        catch (Exception ex)
        {
            throw new RpcException(classifier.Failed(method, request.Id, ex, context, started));
        }
    }

    /// <summary>A call that reads state only: answered, counted under <paramref name="method"/>, failures mapped and logged.</summary>
    private Task<T> Answer<T>(string method, ServerCallContext context, Func<(T Response, string? Model)> answer)
    {
        long started = Stopwatch.GetTimestamp();
        try
        {
            (T response, string? model) = answer();
            metrics.RecordRequest(method, model, StatusCode.OK, started);
            return Task.FromResult(response);
        }
        catch (Exception ex)
        {
            Status status = GrpcErrors.ToStatus(ex, context);
            metrics.RecordRequest(method, host.Current?.Manifest.Name, status.StatusCode, started);
            if (logBudget.TryTake(out long skipped)) LogRefused(logger, method, status.StatusCode, status.Detail, skipped);
            throw new RpcException(status);
        }
    }

    /// <summary>The served model when <paramref name="name"/> and <paramref name="version"/> name it; NOT_FOUND otherwise.</summary>
    private ServedModel Served(string name, string version)
    {
        ServedModel model = host.Current ?? throw GrpcErrors.NotReady();
        CheckModel(name, version, model);
        return model;
    }

    private static void CheckModel(string name, string version, ServedModel model)
    {
        ModelManifest manifest = model.Manifest;
        if (name != manifest.Name)
        {
            throw new RpcException(new Status(StatusCode.NotFound,
                $"Model '{LogText.Quote(name)}' is not served here; this server serves '{LogText.Quote(manifest.Name)}'."));
        }
        if (version.Length > 0 && version != manifest.Version)
        {
            throw new RpcException(new Status(StatusCode.NotFound,
                $"Model '{LogText.Quote(name)}' has no version '{LogText.Quote(version)}'; the served version is '{LogText.Quote(manifest.Version)}'."));
        }
    }

    private async Task<bool> IsServingAsync(ServerCallContext context)
    {
        HealthCheckResponse status = await health.Check(new HealthCheckRequest(), context).ConfigureAwait(false);
        return status.Status == HealthCheckResponse.Types.ServingStatus.Serving;
    }

    private static string ConnectionOf(ServerCallContext context) => context.GetHttpContext().Connection.Id;

    [LoggerMessage(EventId = 30, Level = LogLevel.Information,
        Message = "Request {RequestId} (ModelInfer, {Images} images) refused: its connection's share of the queue is full ({Skipped} more refusals not logged before this one)")]
    private static partial void LogConnectionFull(ILogger logger, string requestId, int images, long skipped);

    [LoggerMessage(EventId = 31, Level = LogLevel.Information, Message = "{Method} refused: {StatusCode} {Detail} ({Skipped} more refusals not logged before this one)")]
    private static partial void LogRefused(ILogger logger, string method, StatusCode statusCode, string detail, long skipped);
}
