using System.Diagnostics;
using System.Threading.Channels;
using Grpc.Core;
using Microsoft.Extensions.Options;
using XRay.Batching;
using XRay.Contracts.V1;
using XRay.Server.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>The xray.v1.Classifier service: validates and decodes requests, queues them on the batcher, answers.</summary>
public sealed partial class ClassifierService(
    ModelHost host,
    DecodePool decodePool,
    IOptions<BatchingOptions> batchingOptions,
    IOptions<ServingOptions> servingOptions,
    XRayMetrics metrics,
    LogBudget logBudget,
    ILogger<ClassifierService> logger) : Classifier.ClassifierBase
{
    public override async Task<ClassifyResponse> Classify(ClassifyRequest request, ServerCallContext context)
    {
        long started = metrics.RequestStart(ClassifierMethods.Classify);
        if (request.RequestId.Length == 0)
        {
            // Named by its call, so its log line, span and response carry an id the caller can quote.
            request.RequestId = CallId(context);
        }
        try
        {
            ClassifyResponse response = await ClassifyAsync(request, context).ConfigureAwait(false);
            metrics.RequestStop(ClassifierMethods.Classify, response.ModelName, StatusCode.OK, started);
            return response;
        }
        catch (Exception ex)
        {
            throw new RpcException(Failed(ClassifierMethods.Classify, request.RequestId, ex, context, started));
        }
    }

    public override async Task ClassifyStream(
        IAsyncStreamReader<ClassifyRequest> requestStream,
        IServerStreamWriter<ClassifyResponse> responseStream,
        ServerCallContext context)
    {
        // Requests run concurrently; one writer loop serialises the responses (stream writes must not overlap).
        int maxInFlight = servingOptions.Value.StreamMaxInFlight;
        using var slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        var responses = Channel.CreateUnbounded<ClassifyResponse>(new UnboundedChannelOptions { SingleReader = true });
        Task writer = WriteAllAsync(responses.Reader, responseStream, context.CancellationToken);

        try
        {
            await foreach (ClassifyRequest request in requestStream.ReadAllAsync(context.CancellationToken).ConfigureAwait(false))
            {
                // A full window stops reading, so HTTP/2 flow control pushes back on the client.
                await slots.WaitAsync(context.CancellationToken).ConfigureAwait(false);
                _ = AnswerAsync(request);
            }
        }
        finally
        {
            // Every request read gets its answer before the call ends: wait for all in-flight slots back.
            for (int i = 0; i < maxInFlight; i++)
            {
                await slots.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            }
            responses.Writer.Complete();
        }
        await writer.ConfigureAwait(false);

        async Task AnswerAsync(ClassifyRequest request)
        {
            // A span per message, child of the call's span: the batch spans link to it. Current only inside this method.
            using Activity? span = XRayTracing.Source.StartActivity(XRayTracing.StreamMessageSpanName);
            long started = metrics.RequestStart(ClassifierMethods.ClassifyStream);
            ClassifyResponse response;
            try
            {
                response = await ClassifyAsync(request, context).ConfigureAwait(false);
                metrics.RequestStop(ClassifierMethods.ClassifyStream, response.ModelName, StatusCode.OK, started);
            }
            catch (Exception ex)
            {
                Status status = Failed(ClassifierMethods.ClassifyStream, request.RequestId, ex, context, started);
                response = new ClassifyResponse
                {
                    RequestId = request.RequestId,
                    Error = new Error { Code = (int)status.StatusCode, Message = status.Detail },
                };
            }
            // Written before the slot is returned, so the writer cannot be completed ahead of this response.
            responses.Writer.TryWrite(response);
            slots.Release();
        }
    }

    private static async Task WriteAllAsync(ChannelReader<ClassifyResponse> responses, IServerStreamWriter<ClassifyResponse> stream, CancellationToken cancellationToken)
    {
        await foreach (ClassifyResponse response in responses.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            if (!cancellationToken.IsCancellationRequested)
            {
                await stream.WriteAsync(response, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    public override Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context)
    {
        long started = Stopwatch.GetTimestamp();
        if (host.Current is not { } model)
        {
            metrics.RecordRequest(ClassifierMethods.GetModelInfo, null, StatusCode.Unavailable, started);
            throw new RpcException(GrpcErrors.ToStatus(GrpcErrors.NotReady(), context));
        }
        ModelInfo info = ModelInfoFactory.Create(model, batchingOptions.Value);
        metrics.RecordRequest(ClassifierMethods.GetModelInfo, model.Manifest.Name, StatusCode.OK, started);
        return Task.FromResult(info);
    }

    /// <summary>
    /// Classifies <paramref name="request"/> on the served model: admission, decoding, the batcher, predictions. Shared
    /// by every API that classifies (xray.v1 and the Open Inference Protocol), so that all answer alike.
    /// </summary>
    /// <param name="deadline">An earlier deadline than the call's own, if any (a request's timeout parameter).</param>
    internal async Task<ClassifyResponse> ClassifyAsync(ClassifyRequest request, ServerCallContext context, DateTimeOffset? deadline = null)
    {
        while (true)
        {
            ServedModel model = host.Current ?? throw GrpcErrors.NotReady();
            try
            {
                return await ClassifyAsync(request, model, context, deadline).ConfigureAwait(false);
            }
            catch (BatchRejectedException ex) when (ex.Reason == RejectionReason.ShuttingDown && host.Current is { } current && current != model)
            {
                // The model was swapped between reading it and queueing on it: its batcher stopped admitting.
                // Run the request on the model now served (decoded again: preprocessing may differ).
            }
        }
    }

    private async Task<ClassifyResponse> ClassifyAsync(ClassifyRequest request, ServedModel model, ServerCallContext context, DateTimeOffset? earlierDeadline)
    {
        // The span of this request: the RPC's, or the stream message's. The batches that run its images link to it.
        Activity? span = Activity.Current;
        span?.SetTag(XRayTracing.RequestIdTag, LogText.Quote(request.RequestId));
        int maxImages = batchingOptions.Value.MaxQueueSize;
        // Admission before decoding: room in the queue is taken (or refused at once) before a pixel is decoded, and
        // given back if decoding fails. The caller's share is per authenticated caller, else per connection: one
        // caller's backlog cannot starve another's requests.
        // A request whose deadline is shorter than the estimated wait is refused here too: it would time out queued.
        DateTimeOffset? deadline = context.Deadline == DateTime.MaxValue ? null : new DateTimeOffset(context.Deadline);
        if (earlierDeadline is { } earlier && (deadline is null || earlier < deadline))
        {
            deadline = earlier;
        }
        using QueueReservation reservation = model.Batcher.Reserve(RequestDecoder.CountImages(request, maxImages), FairShareKey(context), deadline);
        (float[][] images, IReadOnlyList<string>[] warnings) = await RequestDecoder.DecodeAsync(request, model.Preprocessor, maxImages, decodePool, context.CancellationToken, model.Buffers)
            .ConfigureAwait(false);
        span?.SetTag(XRayTracing.ImagesTag, images.Length);

        ActivityContext requestSpan = span?.Context ?? default;
        var queued = new QueuedImage[images.Length];
        for (int i = 0; i < images.Length; i++)
        {
            queued[i] = new QueuedImage(images[i], requestSpan);
        }
        ItemResult<float[]>[] results = await model.Batcher
            .EnqueueAsync(reservation, queued, deadline, context.CancellationToken)
            .ConfigureAwait(false);
        // A request split across batches waited until its last batch started.
        metrics.RequestQueued(results.Max(result => result.QueueTime));

        var response = new ClassifyResponse
        {
            RequestId = request.RequestId,
            ModelName = model.Manifest.Name,
            ModelVersion = model.Manifest.Version,
        };
        for (int i = 0; i < results.Length; i++)
        {
            response.Predictions.Add(PredictionFactory.Create(results[i], model, warnings[i]));
        }
        return response;
    }

    /// <summary>
    /// Whose fair share a request counts against: the authenticated caller (API key, token subject, client certificate
    /// identity) when there is one, so that one caller's many connections share one turn; otherwise its connection.
    /// </summary>
    internal static object FairShareKey(ServerCallContext context) =>
        context.GetHttpContext().User.Identity is { IsAuthenticated: true, Name: { Length: > 0 } name } identity
            ? $"caller:{identity.AuthenticationType}:{name}"
            : context.Peer;

    /// <summary>Maps a failed request to its status, counts it and logs it: one line per failed request.</summary>
    internal Status Failed(string method, string requestId, Exception exception, ServerCallContext context, long started)
    {
        Status status = GrpcErrors.ToStatus(exception, context);
        if (GrpcErrors.RejectionReasonOf(exception, status.StatusCode) is { } reason)
        {
            metrics.RequestRejected(reason);
        }
        metrics.RequestStop(method, host.Current?.Manifest.Name, status.StatusCode, started);
        // The request's span: the RPC's, or the stream message's.
        if (Activity.Current is { } span)
        {
            span.SetTag(XRayMetrics.StatusCodeTag, XRayMetrics.StatusName(status.StatusCode));
            if (GrpcErrors.IsServerSpanError(status.StatusCode))
            {
                span.SetStatus(ActivityStatusCode.Error, status.Detail);
            }
        }

        // The request id (a stream message without one: its call's), the status and what was wrong; never the pixels.
        if (requestId.Length == 0)
        {
            requestId = CallId(context);
        }
        if (GrpcErrors.IsServerFault(status.StatusCode))
        {
            LogServerFault(logger, LogText.Quote(requestId), method, status.StatusCode, exception);
        }
        else if (logBudget.TryTake(out long skipped))
        {
            // Refusals are the caller's doing and can come in floods: a few lines a second, the rest counted.
            LogRejected(logger, LogText.Quote(requestId), method, status.StatusCode, status.Detail, skipped);
        }
        return status;
    }

    /// <summary>
    /// The call's own id, Kestrel's <c>connection:stream</c> (as in its logs and <c>HttpContext.TraceIdentifier</c>):
    /// names a request that carries no <c>request_id</c>.
    /// </summary>
    internal static string CallId(ServerCallContext context)
    {
        try
        {
            return context.GetHttpContext().TraceIdentifier;
        }
        catch (InvalidOperationException)
        {
            return "-";
        }
    }

    [LoggerMessage(EventId = 10, Level = LogLevel.Error, Message = "Request {RequestId} ({Method}) failed: {StatusCode}")]
    private static partial void LogServerFault(ILogger logger, string requestId, string method, StatusCode statusCode, Exception exception);

    [LoggerMessage(EventId = 11, Level = LogLevel.Information,
        Message = "Request {RequestId} ({Method}) rejected: {StatusCode} {Detail} ({Skipped} more rejections not logged before this one)")]
    private static partial void LogRejected(ILogger logger, string requestId, string method, StatusCode statusCode, string detail, long skipped);
}

internal static class PredictionFactory
{
    /// <summary>
    /// One image's answer: raw logits, probabilities through the model's <see cref="ProbabilityMap"/> (its calibration, or
    /// the plain sigmoid), and the findings at or above their thresholds, unless the image drew <paramref name="warnings"/>:
    /// then the warnings are returned and the findings withheld (logits and probabilities are still given).
    /// </summary>
    public static Prediction Create(ItemResult<float[]> result, ServedModel model, IReadOnlyList<string> warnings)
    {
        IReadOnlyList<string> classNames = model.Manifest.ClassNames;
        IReadOnlyList<float> thresholds = model.Thresholds;
        var prediction = new Prediction
        {
            Timing = new Timing
            {
                QueueUs = (long)result.QueueTime.TotalMicroseconds,
                ComputeUs = (long)result.ComputeTime.TotalMicroseconds,
                BatchSize = result.BatchSize,
            },
        };
        float[] logits = result.Output;
        if (!logits.All(float.IsFinite))
        {
            // Never answered OK: a NaN or infinite logit has no probability a caller could act on.
            throw new RpcException(new Status(StatusCode.Internal, "The model's output for this input is not finite (NaN or infinity); it is not returned."));
        }
        prediction.Logits.Add(logits);
        prediction.Warnings.Add(warnings);
        for (int c = 0; c < logits.Length; c++)
        {
            float probability = model.Probabilities.Probability(c, logits[c]);
            prediction.Probabilities.Add(probability);
            if (warnings.Count == 0 && probability >= thresholds[c])
            {
                prediction.Findings.Add(new Finding { Name = classNames[c], ClassIndex = c, Probability = probability, Threshold = thresholds[c] });
            }
        }
        return prediction;
    }
}

internal static class ModelInfoFactory
{
    public static ModelInfo Create(ServedModel model, BatchingOptions batching)
    {
        var manifest = model.Manifest;
        var preprocessing = manifest.Preprocessing;
        int size = preprocessing.CropSize;
        var info = new ModelInfo
        {
            Name = manifest.Name,
            Version = manifest.Version,
            Architecture = manifest.Architecture,
            Runtime = model.Backend.Runtime,
            Device = model.Backend.Device,
            Precision = model.Backend.Precision,
            Description = manifest.Description,
            Preprocessing = new Preprocessing
            {
                ResizeSize = preprocessing.ResizeSize,
                CropSize = size,
                Color = preprocessing.Color,
            },
            Batching = new BatchingSettings
            {
                MaxBatchSize = batching.MaxBatchSize,
                MaxQueueDelayUs = batching.MaxQueueDelayMicroseconds,
                MaxQueueSize = batching.MaxQueueSize,
                ModelInstances = batching.ModelInstances,
            },
        };
        info.ClassNames.Add(manifest.ClassNames);
        info.Thresholds.Add(model.Thresholds);
        if (manifest.Calibration is not null)
        {
            info.Calibration.Add(model.Probabilities.Classes.Select(k => new ClassCalibration { Scale = k.Scale, Offset = k.Offset }));
        }
        if (manifest.OperatingPoints is { } points)
        {
            info.ThresholdRules.Add(points.Classes.Select(p => $"{p.Rule}, on {points.ChosenOn}"));
        }
        info.Preprocessing.Mean.Add(preprocessing.Mean);
        info.Preprocessing.Std.Add(preprocessing.Std);
        foreach (DataType dtype in new[] { DataType.Float32, DataType.Uint8 })
        {
            foreach (int channels in new[] { 1, 3 })
            {
                // Normalised float32 input of a 1-channel model has exactly one channel.
                if (dtype == DataType.Float32 && channels > preprocessing.Channels) continue;
                info.Inputs.Add(new InputSpec { Shape = { channels, size, size }, Dtype = dtype, Format = "tensor, one image" });
                info.Inputs.Add(new InputSpec { Shape = { -1, channels, size, size }, Dtype = dtype, Format = "tensor, N images" });
            }
        }
        info.Inputs.Add(new InputSpec { Shape = { -1 }, Dtype = DataType.Uint8, Format = "encoded PNG or JPEG, any size, grayscale or colour" });
        return info;
    }
}
