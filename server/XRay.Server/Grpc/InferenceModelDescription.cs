using XRay.Batching;
using XRay.Contracts.Inference;
using XRay.Server.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>The served model as the Open Inference Protocol describes it: metadata, Triton's configuration and statistics.</summary>
internal static class InferenceModelDescription
{
    public static ModelMetadataResponse Metadata(ServedModel model)
    {
        var manifest = model.Manifest;
        int size = manifest.Preprocessing.CropSize, classes = manifest.ClassNames.Count;
        return new ModelMetadataResponse
        {
            Name = manifest.Name,
            Versions = { manifest.Version },
            Platform = Platform(model.Backend.Runtime),
            // The input as the model takes it; UINT8 [N,1|3,H,W] and BYTES [N] (encoded PNG/JPEG) are accepted as well.
            Inputs =
            {
                new ModelMetadataResponse.Types.TensorMetadata
                {
                    Name = InferenceTensors.InputName, Datatype = InferenceTensors.Fp32, Shape = { -1, manifest.Preprocessing.Channels, size, size },
                },
            },
            Outputs =
            {
                new ModelMetadataResponse.Types.TensorMetadata { Name = InferenceTensors.LogitsOutput, Datatype = InferenceTensors.Fp32, Shape = { -1, classes } },
                new ModelMetadataResponse.Types.TensorMetadata { Name = InferenceTensors.ProbabilitiesOutput, Datatype = InferenceTensors.Fp32, Shape = { -1, classes } },
            },
        };
    }

    public static ModelConfig Config(ServedModel model, BatchingOptions batching)
    {
        var manifest = model.Manifest;
        int size = manifest.Preprocessing.CropSize, classes = manifest.ClassNames.Count;
        var config = new ModelConfig
        {
            Name = manifest.Name,
            Platform = Platform(model.Backend.Runtime),
            Backend = model.Backend.Runtime,
            MaxBatchSize = batching.MaxBatchSize,
            Input =
            {
                new ModelInput
                {
                    Name = InferenceTensors.InputName, DataType = DataType.TypeFp32, Format = ModelInput.Types.Format.Nchw,
                    Dims = { manifest.Preprocessing.Channels, size, size },
                },
            },
            Output =
            {
                new ModelOutput { Name = InferenceTensors.LogitsOutput, DataType = DataType.TypeFp32, Dims = { classes } },
                new ModelOutput { Name = InferenceTensors.ProbabilitiesOutput, DataType = DataType.TypeFp32, Dims = { classes } },
            },
            InstanceGroup =
            {
                new ModelInstanceGroup
                {
                    Name = $"{manifest.Name}_0",
                    Count = batching.ModelInstances,
                    Kind = model.Backend.Device.StartsWith("cuda", StringComparison.Ordinal) ? ModelInstanceGroup.Types.Kind.Gpu : ModelInstanceGroup.Types.Kind.Cpu,
                },
            },
            DynamicBatching = new ModelDynamicBatching
            {
                MaxQueueDelayMicroseconds = (ulong)batching.MaxQueueDelayMicroseconds,
                PreferredBatchSize = { model.Batcher.PreferredBatchSizes?.Sizes ?? [] },
            },
        };
        // What Triton's configuration has no field for: the class names in output order, thresholds, preprocessing.
        config.Parameters.Add("version", new ModelParameter { StringValue = manifest.Version });
        config.Parameters.Add("architecture", new ModelParameter { StringValue = manifest.Architecture });
        config.Parameters.Add("device", new ModelParameter { StringValue = model.Backend.Device });
        config.Parameters.Add("precision", new ModelParameter { StringValue = model.Backend.Precision });
        config.Parameters.Add("class_names", new ModelParameter { StringValue = string.Join(",", manifest.ClassNames) });
        config.Parameters.Add("thresholds", new ModelParameter
        {
            StringValue = string.Join(",", model.Thresholds.Select(t => t.ToString("R", System.Globalization.CultureInfo.InvariantCulture))),
        });
        config.Parameters.Add("max_queue_size", new ModelParameter { StringValue = batching.MaxQueueSize.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        return config;
    }

    public static ModelStatistics Statistics(ServedModel model, ServingStatistics.Snapshot counts)
    {
        var statistics = new ModelStatistics
        {
            Name = model.Manifest.Name,
            Version = model.Manifest.Version,
            LastInference = (ulong)counts.LastInferenceUnixMs,
            InferenceCount = (ulong)counts.ImagesClassified,
            ExecutionCount = (ulong)counts.Executions,
            InferenceStats = new InferStatistics
            {
                Success = Of(counts.Success),
                Fail = Of(counts.Fail),
                Queue = Of(counts.Queue),
                ComputeInfer = Of(counts.Compute),
            },
        };
        foreach ((int batchSize, ServingStatistics.Duration compute) in counts.Batches)
        {
            statistics.BatchStats.Add(new InferBatchStatistics { BatchSize = (ulong)batchSize, ComputeInfer = Of(compute) });
        }
        return statistics;
    }

    private static StatisticDuration Of(ServingStatistics.Duration duration) =>
        new() { Count = (ulong)duration.Count, Ns = (ulong)duration.Nanoseconds };

    /// <summary>Triton's platform name for the runtime serving the model.</summary>
    private static string Platform(string runtime) => runtime switch
    {
        ModelOptions.OnnxRuntime => "onnxruntime_onnx",
        ModelOptions.Torch => "pytorch_libtorch",
        _ => runtime,
    };
}
