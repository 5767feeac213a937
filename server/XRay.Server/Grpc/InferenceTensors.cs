using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Google.Protobuf;
using XRay.Contracts.Inference;
using XRay.Contracts.V1;
using XRay.Model;
using DataType = XRay.Contracts.V1.DataType;

namespace XRay.Server.Grpc;

/// <summary>
/// Translates between the Open Inference Protocol's tensors and the xray.v1 request and response, so that a
/// <see cref="ModelInferRequest"/> is admitted, decoded, batched and answered by the very path a ClassifyRequest takes.
/// Every check that can be made from the message's fields is made here, with the protocol's field names in the message.
/// </summary>
internal static class InferenceTensors
{
    /// <summary>The model's one input: images as FP32 or UINT8 tensors, or BYTES holding encoded PNG/JPEG.</summary>
    public const string InputName = "images";
    public const string LogitsOutput = "logits";
    public const string ProbabilitiesOutput = "probabilities";
    public static readonly IReadOnlyList<string> Outputs = [LogitsOutput, ProbabilitiesOutput];

    public const string Fp32 = "FP32";
    public const string Uint8 = "UINT8";
    public const string Bytes = "BYTES";

    /// <summary>Request parameter: microseconds the request may wait for its batch (0: no limit beyond the call's deadline).</summary>
    public const string TimeoutParameter = "timeout";
    /// <summary>Request parameter: accepted for compatibility; the batcher has one priority level.</summary>
    public const string PriorityParameter = "priority";
    /// <summary>Output (or request, for every output) parameter: false puts the data in contents rather than raw_output_contents.</summary>
    public const string BinaryDataParameter = "binary_data";
    public const string BinaryDataOutputParameter = "binary_data_output";

    /// <summary>Response parameters: microseconds queued, microseconds of compute, images in the batch (largest over the request's images).</summary>
    public const string QueueUsParameter = "queue_us";
    public const string ComputeUsParameter = "compute_us";
    public const string BatchSizeParameter = "batch_size";
    public const string WarningsParameter = "warnings";

    /// <summary>What a request asks for beyond its images.</summary>
    public sealed record Options(IReadOnlyList<string> Outputs, bool Raw, TimeSpan? Timeout);

    /// <summary>
    /// Images the request holds, from its shape alone (no data is read): what admission counts. A malformed request
    /// counts as 1; <see cref="ToClassifyRequest"/> then says what is wrong.
    /// </summary>
    public static int ImageCount(ModelInferRequest request) =>
        request.Inputs.Count == 1 && request.Inputs[0].Shape.Count >= 1
            ? (int)Math.Clamp(request.Inputs[0].Shape[0], 1, int.MaxValue)
            : 1;

    /// <summary>The request's options: outputs asked for, where their data goes, its timeout.</summary>
    public static Options ReadOptions(ModelInferRequest request)
    {
        TimeSpan? timeout = null;
        bool? raw = null;
        foreach ((string name, InferParameter value) in request.Parameters)
        {
            switch (name)
            {
                case TimeoutParameter:
                    long micros = Integer(value, $"parameters[\"{TimeoutParameter}\"]");
                    if (micros < 0)
                    {
                        throw new InvalidRequestException($"parameters[\"{TimeoutParameter}\"] is {micros}; give microseconds >= 0 (0: no timeout).");
                    }
                    timeout = micros == 0 ? null : TimeSpan.FromMicroseconds(micros);
                    break;
                case PriorityParameter:
                    if (Integer(value, $"parameters[\"{PriorityParameter}\"]") < 0)
                    {
                        throw new InvalidRequestException($"parameters[\"{PriorityParameter}\"] must be >= 0.");
                    }
                    break;
                case BinaryDataOutputParameter:
                    raw = Boolean(value, $"parameters[\"{BinaryDataOutputParameter}\"]");
                    break;
                default:
                    throw new InvalidRequestException(
                        $"parameters['{LogText.Quote(name)}'] is not a parameter this server knows; use {TimeoutParameter}, {PriorityParameter} or {BinaryDataOutputParameter}.");
            }
        }

        var outputs = new List<string>(2);
        foreach (ModelInferRequest.Types.InferRequestedOutputTensor output in request.Outputs)
        {
            if (!Outputs.Contains(output.Name, StringComparer.Ordinal))
            {
                throw new InvalidRequestException(
                    $"outputs: '{LogText.Quote(output.Name)}' is not an output of this model; its outputs are {LogitsOutput} and {ProbabilitiesOutput}.");
            }
            if (outputs.Contains(output.Name, StringComparer.Ordinal))
            {
                throw new InvalidRequestException($"outputs: {output.Name} is asked for twice.");
            }
            foreach ((string name, InferParameter value) in output.Parameters)
            {
                if (name != BinaryDataParameter)
                {
                    throw new InvalidRequestException(
                        $"outputs[{output.Name}].parameters['{LogText.Quote(name)}'] is not a parameter this server knows; use {BinaryDataParameter}.");
                }
                bool binary = Boolean(value, $"outputs[{output.Name}].parameters[\"{BinaryDataParameter}\"]");
                if (raw is { } other && other != binary)
                {
                    throw new InvalidRequestException(
                        $"outputs[{output.Name}].parameters[\"{BinaryDataParameter}\"] differs from another output's: every output goes either in raw_output_contents or in contents.");
                }
                raw = binary;
            }
            outputs.Add(output.Name);
        }
        return new Options(outputs.Count == 0 ? Outputs : outputs, raw ?? true, timeout);
    }

    /// <summary>The request as an xray.v1 ClassifyRequest; its data is shared, not copied, where the wire format allows.</summary>
    public static ClassifyRequest ToClassifyRequest(ModelInferRequest request, int modelChannels, int size, int maxImages)
    {
        if (request.Inputs.Count != 1)
        {
            throw new InvalidRequestException($"The request has {request.Inputs.Count} inputs; this model takes exactly one, {InputName}.");
        }
        ModelInferRequest.Types.InferInputTensor input = request.Inputs[0];
        if (input.Name != InputName)
        {
            throw new InvalidRequestException($"inputs[0].name is '{LogText.Quote(input.Name)}'; this model's input is {InputName}.");
        }
        if (input.Parameters.Count > 0)
        {
            throw new InvalidRequestException($"inputs[{InputName}].parameters: this input takes no parameters.");
        }
        if (request.RawInputContents.Count > 1)
        {
            throw new InvalidRequestException($"raw_input_contents has {request.RawInputContents.Count} entries; the request has 1 input.");
        }
        bool raw = request.RawInputContents.Count == 1;
        if (raw && input.Contents is not null)
        {
            throw new InvalidRequestException($"inputs[{InputName}] has both contents and raw_input_contents; send the data in one of them.");
        }
        if (!raw && input.Contents is null)
        {
            throw new InvalidRequestException($"inputs[{InputName}] has no data: set its contents or raw_input_contents.");
        }

        string shape = $"[{string.Join(",", input.Shape)}]";
        var classify = new ClassifyRequest { RequestId = request.Id };
        switch (input.Datatype)
        {
            case Fp32 or Uint8:
                {
                    if (input.Shape.Count != 4 || input.Shape[0] < 1 || input.Shape[1] is not (1 or 3) || input.Shape[2] != size || input.Shape[3] != size)
                    {
                        throw new InvalidRequestException(
                            $"inputs[{InputName}].shape {shape} is not accepted; expected [N,C,{size},{size}] with N >= 1 and C = 1 or 3.");
                    }
                    long count = input.Shape[0], channels = input.Shape[1];
                    CheckCount(count, maxImages);
                    if (input.Datatype == Fp32 && channels != modelChannels)
                    {
                        throw new InvalidRequestException(
                            $"inputs[{InputName}].shape {shape}: this model takes normalised FP32 tensors with C = {modelChannels}; send C = {modelChannels}, or UINT8 (converted as the model needs).");
                    }
                    long elements = count * channels * size * size;
                    ByteString data = input.Datatype == Fp32 ? Fp32Data(request, input, raw, elements, shape) : Uint8Data(request, input, raw, elements, shape);
                    classify.Tensor = new Tensor
                    {
                        Shape = { input.Shape },
                        Dtype = input.Datatype == Fp32 ? DataType.Float32 : DataType.Uint8,
                        Data = data,
                    };
                    return classify;
                }
            case Bytes:
                {
                    if (input.Shape.Count is not (1 or 2) || input.Shape[0] < 1 || (input.Shape.Count == 2 && input.Shape[1] != 1))
                    {
                        throw new InvalidRequestException(
                            $"inputs[{InputName}].shape {shape} is not accepted for BYTES; expected [N] or [N,1]: N encoded PNG or JPEG images.");
                    }
                    long count = input.Shape[0];
                    CheckCount(count, maxImages);
                    var encoded = new EncodedImages();
                    if (raw)
                    {
                        encoded.Images.AddRange(SplitBytes(request.RawInputContents[0], count, shape));
                    }
                    else
                    {
                        if (input.Contents!.BytesContents.Count != count)
                        {
                            throw new InvalidRequestException(
                                $"inputs[{InputName}].contents.bytes_contents has {input.Contents.BytesContents.Count} elements; shape {shape} needs {count}.");
                        }
                        CheckOnlyField(input.Contents, "bytes_contents", input.Contents.BytesContents.Count);
                        encoded.Images.AddRange(input.Contents.BytesContents);
                    }
                    classify.Encoded = encoded;
                    return classify;
                }
            default:
                throw new InvalidRequestException(
                    $"inputs[{InputName}].datatype '{LogText.Quote(input.Datatype)}' is not accepted; use FP32 or UINT8 (shape [N,C,{size},{size}]) or BYTES (encoded PNG/JPEG).");
        }
    }

    /// <summary>Says which input a decoding failure was in, in the protocol's terms rather than xray.v1's.</summary>
    public static InvalidRequestException InTermsOfInput(InvalidRequestException invalid) =>
        new(invalid.Message.Replace("encoded.images", $"inputs[{InputName}] element", StringComparison.Ordinal)
                           .Replace("tensor.data", $"inputs[{InputName}]", StringComparison.Ordinal));

    /// <summary>The response for <paramref name="request"/> from the xray.v1 answer: its predictions' logits and probabilities.</summary>
    public static ModelInferResponse ToResponse(ModelInferRequest request, ClassifyResponse classified, Options options)
    {
        var response = new ModelInferResponse
        {
            ModelName = classified.ModelName,
            ModelVersion = classified.ModelVersion,
            Id = request.Id,
        };
        // How the request was served, as xray.v1 reports it per image: the longest wait, compute time and largest batch.
        if (classified.Predictions.Count > 0)
        {
            response.Parameters.Add(QueueUsParameter, new InferParameter { Int64Param = classified.Predictions.Max(p => p.Timing.QueueUs) });
            response.Parameters.Add(ComputeUsParameter, new InferParameter { Int64Param = classified.Predictions.Max(p => p.Timing.ComputeUs) });
            response.Parameters.Add(BatchSizeParameter, new InferParameter { Int64Param = classified.Predictions.Max(p => p.Timing.BatchSize) });
        }
        // Images not taken for chest radiographs (xray.v1's per-prediction warnings): one "INDEX: warning" line each.
        string warnings = string.Join('\n', classified.Predictions.SelectMany((p, i) => p.Warnings.Select(w => $"{i}: {w}")));
        if (warnings.Length > 0)
        {
            response.Parameters.Add(WarningsParameter, new InferParameter { StringParam = warnings });
        }
        int rows = classified.Predictions.Count;
        int classes = rows == 0 ? 0 : classified.Predictions[0].Logits.Count;
        foreach (string name in options.Outputs)
        {
            var values = new float[rows * classes];
            for (int i = 0; i < rows; i++)
            {
                Prediction prediction = classified.Predictions[i];
                var row = name == LogitsOutput ? prediction.Logits : prediction.Probabilities;
                row.CopyTo(values, i * classes);
            }
            var tensor = new ModelInferResponse.Types.InferOutputTensor { Name = name, Datatype = Fp32, Shape = { rows, classes } };
            if (options.Raw)
            {
                // Little-endian, as on every platform this server runs on.
                response.RawOutputContents.Add(UnsafeByteOperations.UnsafeWrap(MemoryMarshal.AsBytes(values.AsSpan()).ToArray()));
            }
            else
            {
                tensor.Contents = new InferTensorContents();
                tensor.Contents.Fp32Contents.Add(values);
            }
            response.Outputs.Add(tensor);
        }
        return response;
    }

    private static ByteString Fp32Data(ModelInferRequest request, ModelInferRequest.Types.InferInputTensor input, bool raw, long elements, string shape)
    {
        if (raw)
        {
            ByteString bytes = request.RawInputContents[0];
            CheckBytes(bytes.Length, elements * sizeof(float), "FP32", shape);
            return bytes;
        }
        var values = input.Contents!.Fp32Contents;
        if (values.Count != elements)
        {
            throw new InvalidRequestException($"inputs[{InputName}].contents.fp32_contents has {values.Count} values; shape {shape} needs {elements}.");
        }
        CheckOnlyField(input.Contents, "fp32_contents", values.Count);
        var data = new byte[elements * sizeof(float)];
        Span<float> floats = MemoryMarshal.Cast<byte, float>(data.AsSpan());
        for (int i = 0; i < values.Count; i++)
        {
            floats[i] = values[i];
        }
        return UnsafeByteOperations.UnsafeWrap(data);
    }

    private static ByteString Uint8Data(ModelInferRequest request, ModelInferRequest.Types.InferInputTensor input, bool raw, long elements, string shape)
    {
        if (raw)
        {
            ByteString bytes = request.RawInputContents[0];
            CheckBytes(bytes.Length, elements, "UINT8", shape);
            return bytes;
        }
        // The protocol carries UINT8 values in uint_contents, one 32-bit field per value.
        var values = input.Contents!.UintContents;
        if (values.Count != elements)
        {
            throw new InvalidRequestException($"inputs[{InputName}].contents.uint_contents has {values.Count} values; shape {shape} needs {elements}.");
        }
        CheckOnlyField(input.Contents, "uint_contents", values.Count);
        var data = new byte[elements];
        for (int i = 0; i < values.Count; i++)
        {
            uint value = values[i];
            if (value > byte.MaxValue)
            {
                throw new InvalidRequestException($"inputs[{InputName}].contents.uint_contents[{i}] is {value}; UINT8 values are 0..255.");
            }
            data[i] = (byte)value;
        }
        return UnsafeByteOperations.UnsafeWrap(data);
    }

    /// <summary>BYTES in raw form: each element is a 4-byte little-endian length and that many bytes.</summary>
    private static List<ByteString> SplitBytes(ByteString raw, long count, string shape)
    {
        var elements = new List<ByteString>((int)count);
        ReadOnlyMemory<byte> rest = raw.Memory;
        while (rest.Length > 0)
        {
            if (rest.Length < sizeof(uint))
            {
                throw new InvalidRequestException($"raw_input_contents[0] ends inside the length of element {elements.Count}: BYTES elements are a 4-byte little-endian length and the bytes.");
            }
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(rest.Span);
            if (length > rest.Length - sizeof(uint))
            {
                throw new InvalidRequestException(
                    $"raw_input_contents[0] element {elements.Count} says {length} bytes but {rest.Length - sizeof(uint)} remain.");
            }
            if (elements.Count == count)
            {
                throw new InvalidRequestException($"raw_input_contents[0] holds more than the {count} elements shape {shape} gives.");
            }
            elements.Add(UnsafeByteOperations.UnsafeWrap(rest.Slice(sizeof(uint), (int)length)));
            rest = rest[(sizeof(uint) + (int)length)..];
        }
        if (elements.Count != count)
        {
            throw new InvalidRequestException($"raw_input_contents[0] holds {elements.Count} elements; shape {shape} needs {count}.");
        }
        return elements;
    }

    private static void CheckBytes(long actual, long expected, string datatype, string shape)
    {
        if (actual != expected)
        {
            throw new InvalidRequestException($"raw_input_contents[0] has {actual} bytes; shape {shape} of {datatype} needs {expected}.");
        }
    }

    /// <summary>Values in a contents field other than the datatype's are a mistake, not something to ignore.</summary>
    private static void CheckOnlyField(InferTensorContents contents, string field, int count)
    {
        int total = contents.BoolContents.Count + contents.IntContents.Count + contents.Int64Contents.Count + contents.UintContents.Count
                    + contents.Uint64Contents.Count + contents.Fp32Contents.Count + contents.Fp64Contents.Count + contents.BytesContents.Count;
        if (total != count)
        {
            throw new InvalidRequestException($"inputs[{InputName}].contents has values outside {field}, the field of its datatype.");
        }
    }

    private static void CheckCount(long count, int maxImages)
    {
        if (count > maxImages)
        {
            throw new InvalidRequestException($"The request has {count} images; at most {maxImages} are accepted per request.");
        }
    }

    private static long Integer(InferParameter value, string what) => value.ParameterChoiceCase switch
    {
        InferParameter.ParameterChoiceOneofCase.Int64Param => value.Int64Param,
        InferParameter.ParameterChoiceOneofCase.Uint64Param when value.Uint64Param <= long.MaxValue => (long)value.Uint64Param,
        _ => throw new InvalidRequestException($"{what} must be an int64_param or uint64_param."),
    };

    private static bool Boolean(InferParameter value, string what) =>
        value.ParameterChoiceCase == InferParameter.ParameterChoiceOneofCase.BoolParam
            ? value.BoolParam
            : throw new InvalidRequestException($"{what} must be a bool_param.");
}
