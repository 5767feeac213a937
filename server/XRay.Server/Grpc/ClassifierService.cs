using System.Threading.Channels;
using Grpc.Core;
using Microsoft.Extensions.Options;
using XRay.Batching;
using XRay.Contracts.V1;
using XRay.Server.Hosting;
using XRay.Server.Model;

namespace XRay.Server.Grpc;

/// <summary>The xray.v1.Classifier service: validates and decodes requests, queues them on the batcher, answers.</summary>
public sealed partial class ClassifierService(
    ModelHost host,
    IOptions<BatchingOptions> batchingOptions,
    IOptions<ServingOptions> servingOptions,
    ILogger<ClassifierService> logger) : Classifier.ClassifierBase
{
    public override async Task<ClassifyResponse> Classify(ClassifyRequest request, ServerCallContext context)
    {
        try
        {
            return await ClassifyAsync(request, context).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not RpcException)
        {
            Status status = GrpcErrors.ToStatus(ex, context);
            LogFailed(status, request.RequestId, ex);
            throw new RpcException(status);
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
            ClassifyResponse response;
            try
            {
                response = await ClassifyAsync(request, context).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                Status status = GrpcErrors.ToStatus(ex, context);
                LogFailed(status, request.RequestId, ex);
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
        ServedModel model = host.Current ?? throw GrpcErrors.NotReady();
        return Task.FromResult(ModelInfoFactory.Create(model, batchingOptions.Value));
    }

    private async Task<ClassifyResponse> ClassifyAsync(ClassifyRequest request, ServerCallContext context)
    {
        ServedModel model = host.Current ?? throw GrpcErrors.NotReady();
        float[][] images = RequestDecoder.Decode(request, model.Preprocessor, batchingOptions.Value.MaxQueueSize);
        DateTimeOffset? deadline = context.Deadline == DateTime.MaxValue ? null : new DateTimeOffset(context.Deadline);

        ItemResult<float[]>[] results = await model.Batcher
            .EnqueueAsync(images, deadline, context.CancellationToken)
            .ConfigureAwait(false);

        var response = new ClassifyResponse
        {
            RequestId = request.RequestId,
            ModelName = model.Manifest.Name,
            ModelVersion = model.Manifest.Version,
        };
        foreach (ItemResult<float[]> result in results)
        {
            response.Predictions.Add(PredictionFactory.Create(result, model.Manifest.ClassNames, model.Thresholds));
        }
        return response;
    }

    private void LogFailed(Status status, string requestId, Exception exception)
    {
        if (GrpcErrors.IsServerFault(status.StatusCode))
        {
            LogServerFault(logger, requestId, status.StatusCode, exception);
        }
        else
        {
            LogRejected(logger, requestId, status.StatusCode, status.Detail);
        }
    }

    [LoggerMessage(EventId = 10, Level = LogLevel.Error, Message = "Request {RequestId} failed: {StatusCode}")]
    private static partial void LogServerFault(ILogger logger, string requestId, StatusCode statusCode, Exception exception);

    [LoggerMessage(EventId = 11, Level = LogLevel.Information, Message = "Request {RequestId} rejected: {StatusCode} {Detail}")]
    private static partial void LogRejected(ILogger logger, string requestId, StatusCode statusCode, string detail);
}

internal static class PredictionFactory
{
    public static Prediction Create(ItemResult<float[]> result, IReadOnlyList<string> classNames, IReadOnlyList<float> thresholds)
    {
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
        prediction.Logits.Add(logits);
        for (int c = 0; c < logits.Length; c++)
        {
            float probability = Sigmoid(logits[c]);
            prediction.Probabilities.Add(probability);
            if (probability >= thresholds[c])
            {
                prediction.Findings.Add(new Finding { Name = classNames[c], ClassIndex = c, Probability = probability, Threshold = thresholds[c] });
            }
        }
        return prediction;
    }

    // Each finding independently: multi-label, so no softmax across classes.
    public static float Sigmoid(float logit) => 1f / (1f + MathF.Exp(-logit));
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
        info.Preprocessing.Mean.Add(preprocessing.Mean);
        info.Preprocessing.Std.Add(preprocessing.Std);
        foreach (DataType dtype in new[] { DataType.Float32, DataType.Uint8 })
        {
            foreach (int channels in new[] { 1, 3 })
            {
                info.Inputs.Add(new InputSpec { Shape = { channels, size, size }, Dtype = dtype, Format = "tensor, one image" });
                info.Inputs.Add(new InputSpec { Shape = { -1, channels, size, size }, Dtype = dtype, Format = "tensor, N images" });
            }
        }
        info.Inputs.Add(new InputSpec { Shape = { -1 }, Dtype = DataType.Uint8, Format = "encoded PNG or JPEG, any size, grayscale or colour" });
        return info;
    }
}
