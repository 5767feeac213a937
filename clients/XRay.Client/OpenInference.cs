using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Google.Protobuf;
using Grpc.Core;
using XRay.Contracts.Inference;
using XRay.Contracts.V1;

namespace XRay.Client;

/// <summary>
/// Requests and responses of the server's Open Inference Protocol (KServe v2) API, <c>inference.GRPCInferenceService</c>:
/// the model's one input <c>images</c> (FP32 or UINT8 <c>[N,C,224,224]</c>, or BYTES <c>[N]</c> holding PNG/JPEG) and its
/// outputs <c>logits</c> and <c>probabilities</c> (<c>[N,classes]</c> FP32), all data as raw little-endian bytes.
/// </summary>
public static class OpenInference
{
    public const string InputName = "images";
    public const string LogitsOutput = "logits";
    public const string ProbabilitiesOutput = "probabilities";

    /// <summary>PNG or JPEG bytes, one image each, as one BYTES input (each element a 4-byte little-endian length and the bytes).</summary>
    public static ModelInferRequest Encoded(string modelName, IReadOnlyList<ReadOnlyMemory<byte>> images, string id = "")
    {
        int length = images.Sum(image => sizeof(uint) + image.Length);
        var raw = new byte[length];
        int offset = 0;
        foreach (ReadOnlyMemory<byte> image in images)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(offset), (uint)image.Length);
            image.Span.CopyTo(raw.AsSpan(offset + sizeof(uint)));
            offset += sizeof(uint) + image.Length;
        }
        return Request(modelName, id, "BYTES", [images.Count], UnsafeByteOperations.UnsafeWrap(raw));
    }

    /// <summary>Normalised float32 pixels, shape [N,C,H,W].</summary>
    public static ModelInferRequest Float32(string modelName, ReadOnlySpan<float> data, long[] shape, string id = "") =>
        Request(modelName, id, "FP32", shape, ByteString.CopyFrom(MemoryMarshal.AsBytes(data)));

    /// <summary>0..255 pixels, shape [N,C,H,W]; the server normalises them.</summary>
    public static ModelInferRequest UInt8(string modelName, ReadOnlySpan<byte> data, long[] shape, string id = "") =>
        Request(modelName, id, "UINT8", shape, ByteString.CopyFrom(data));

    /// <summary>The same images as an xray.v1 request (a [C,H,W] tensor becomes [1,C,H,W]); its data is shared, not copied.</summary>
    public static ModelInferRequest From(ClassifyRequest request, string modelName)
    {
        switch (request.InputCase)
        {
            case ClassifyRequest.InputOneofCase.Tensor:
                Tensor tensor = request.Tensor;
                long[] shape = tensor.Shape.Count == 3 ? [1, .. tensor.Shape] : [.. tensor.Shape];
                string datatype = tensor.Dtype == Contracts.V1.DataType.Float32 ? "FP32" : "UINT8";
                return Request(modelName, request.RequestId, datatype, shape, tensor.Data);
            case ClassifyRequest.InputOneofCase.Encoded:
                return Encoded(modelName, request.Encoded.Images.Select(image => image.Memory).ToArray(), request.RequestId);
            default:
                throw new ArgumentException("The request has no input.", nameof(request));
        }
    }

    /// <summary>An output's values, row-major [N,classes], from raw_output_contents or contents.</summary>
    public static float[] Output(ModelInferResponse response, string name)
    {
        for (int i = 0; i < response.Outputs.Count; i++)
        {
            ModelInferResponse.Types.InferOutputTensor output = response.Outputs[i];
            if (output.Name != name) continue;
            if (response.RawOutputContents.Count > i)
            {
                return MemoryMarshal.Cast<byte, float>(response.RawOutputContents[i].Span).ToArray();
            }
            return output.Contents?.Fp32Contents.ToArray() ?? [];
        }
        throw new KeyNotFoundException($"The response has no output '{name}'.");
    }

    /// <summary>The response as xray.v1 reports it: one prediction per image with its logits, probabilities and warnings (no findings).</summary>
    public static ClassifyResponse ToClassifyResponse(ModelInferResponse response)
    {
        float[] logits = Output(response, LogitsOutput);
        float[] probabilities = Output(response, ProbabilitiesOutput);
        var shape = response.Outputs.First(output => output.Name == LogitsOutput).Shape;
        int rows = (int)shape[0], classes = (int)shape[1];
        var classified = new ClassifyResponse { RequestId = response.Id, ModelName = response.ModelName, ModelVersion = response.ModelVersion };
        var timing = new Timing
        {
            QueueUs = Parameter(response, "queue_us"),
            ComputeUs = Parameter(response, "compute_us"),
            BatchSize = (int)Parameter(response, "batch_size"),
        };
        for (int i = 0; i < rows; i++)
        {
            var prediction = new Prediction { Timing = timing };
            prediction.Logits.Add(logits.AsSpan(i * classes, classes).ToArray());
            prediction.Probabilities.Add(probabilities.AsSpan(i * classes, classes).ToArray());
            classified.Predictions.Add(prediction);
        }
        // The server's "warnings" parameter: one "INDEX: warning" line per warning.
        if (response.Parameters.TryGetValue("warnings", out InferParameter? warnings))
        {
            foreach (string line in warnings.StringParam.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                int colon = line.IndexOf(": ", StringComparison.Ordinal);
                if (colon > 0 && int.TryParse(line.AsSpan(0, colon), out int index) && index >= 0 && index < rows)
                {
                    classified.Predictions[index].Warnings.Add(line[(colon + 2)..]);
                }
            }
        }
        return classified;
    }

    /// <summary>
    /// The status of a ModelStreamInfer error_message, which the server writes as <c>STATUS_NAME: detail</c>
    /// (UNKNOWN when it names no status).
    /// </summary>
    public static Status StatusOf(string errorMessage)
    {
        int colon = errorMessage.IndexOf(": ", StringComparison.Ordinal);
        if (colon > 0 && Enum.TryParse(errorMessage[..colon].Replace("_", "", StringComparison.Ordinal), ignoreCase: true, out StatusCode code))
        {
            return new Status(code, errorMessage[(colon + 2)..]);
        }
        return new Status(StatusCode.Unknown, errorMessage);
    }

    private static long Parameter(ModelInferResponse response, string name) =>
        response.Parameters.TryGetValue(name, out InferParameter? value) ? value.Int64Param : 0;

    private static ModelInferRequest Request(string modelName, string id, string datatype, long[] shape, ByteString data)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("The tensor wire format is little-endian.");
        }
        return new ModelInferRequest
        {
            ModelName = modelName,
            Id = id,
            Inputs = { new ModelInferRequest.Types.InferInputTensor { Name = InputName, Datatype = datatype, Shape = { shape } } },
            RawInputContents = { data },
        };
    }
}

/// <summary>
/// One ModelStreamInfer call with many requests in flight: each <see cref="InferAsync"/> completes when the response
/// with its id arrives (in any order); a request's error_message becomes an <see cref="RpcException"/>.
/// </summary>
public sealed class InferenceStreamSession : StreamSession<ModelInferRequest, ModelStreamInferResponse, ModelInferResponse>
{
    internal InferenceStreamSession(AsyncDuplexStreamingCall<ModelInferRequest, ModelStreamInferResponse> call)
        : base(call, "id")
    {
    }

    /// <summary>Sends a request (an id is assigned if empty).</summary>
    public Task<ModelInferResponse> InferAsync(ModelInferRequest request, CancellationToken cancellationToken = default) =>
        SendAsync(request, cancellationToken);

    private protected override string IdOf(ModelInferRequest request) => request.Id;

    private protected override void SetId(ModelInferRequest request, string id) => request.Id = id;

    private protected override (string? Id, ModelInferResponse? Result, Exception? Error) Answer(ModelStreamInferResponse response) =>
        response.InferResponse is not { } answer ? (null, null, null)
        : response.ErrorMessage.Length > 0 ? (answer.Id, null, new RpcException(OpenInference.StatusOf(response.ErrorMessage)))
        : (answer.Id, answer, null);
}
