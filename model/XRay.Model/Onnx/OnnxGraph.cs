using System.Runtime.InteropServices;
using Google.Protobuf;
using XRay.Model.Onnx.Proto;

namespace XRay.Model.Onnx;

/// <summary>An ONNX file that cannot be imported; the message says which node or tensor and why.</summary>
public sealed class OnnxImportException(string message) : Exception(message);

/// <summary>
/// The graph of an ONNX model file, read with the subset of ONNX's protobuf schema in <c>onnx_subset.proto</c>:
/// nodes (in the file's topological order), their consumers, and the float initializers.
/// </summary>
internal sealed class OnnxGraph
{
    private const int FloatType = 1;

    private readonly Dictionary<string, TensorProto> _initializers;
    private readonly Dictionary<string, List<NodeProto>> _consumers;

    private OnnxGraph(string path, ModelProto model)
    {
        Path = path;
        Producer = $"{model.ProducerName} {model.ProducerVersion}".Trim();
        var graph = model.Graph ?? throw new OnnxImportException($"{path}: the model has no graph.");
        Nodes = graph.Node;
        _initializers = new Dictionary<string, TensorProto>(StringComparer.Ordinal);
        foreach (var tensor in graph.Initializer)
        {
            _initializers[tensor.Name] = tensor;
        }

        _consumers = new Dictionary<string, List<NodeProto>>(StringComparer.Ordinal);
        foreach (var node in graph.Node)
        {
            foreach (var input in node.Input)
            {
                if (!_consumers.TryGetValue(input, out var list))
                {
                    _consumers[input] = list = [];
                }

                list.Add(node);
            }
        }

        var inputs = graph.Input.Where(i => !_initializers.ContainsKey(i.Name)).ToList();
        if (inputs.Count != 1)
        {
            throw new OnnxImportException($"{path}: expected one graph input besides the initializers; found {inputs.Count}.");
        }

        InputName = inputs[0].Name;
        OutputNames = graph.Output.Select(o => o.Name).ToList();
    }

    public string Path { get; }

    public string Producer { get; }

    public IReadOnlyList<NodeProto> Nodes { get; }

    public string InputName { get; }

    public IReadOnlyList<string> OutputNames { get; }

    /// <exception cref="OnnxImportException">The file is missing or is not an ONNX model.</exception>
    public static OnnxGraph Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new OnnxImportException($"ONNX file '{path}' does not exist.");
        }

        ModelProto model;
        try
        {
            using var stream = File.OpenRead(path);
            model = ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new OnnxImportException($"{path} is not an ONNX model: {e.Message}");
        }

        return new OnnxGraph(path, model);
    }

    public bool IsInitializer(string name) => _initializers.ContainsKey(name);

    /// <summary>The nodes that take <paramref name="tensor"/> as an input.</summary>
    public IReadOnlyList<NodeProto> ConsumersOf(string tensor) =>
        _consumers.TryGetValue(tensor, out var list) ? list : [];

    /// <summary>The one node of type <paramref name="opType"/> that consumes <paramref name="tensor"/>.</summary>
    public NodeProto OnlyConsumer(string tensor, string opType)
    {
        var matches = ConsumersOf(tensor).Where(n => n.OpType == opType).ToList();
        return matches.Count == 1
            ? matches[0]
            : throw new OnnxImportException(
                $"{Path}: expected one {opType} node reading '{tensor}'; found {matches.Count} " +
                $"(consumers: {string.Join(", ", ConsumersOf(tensor).Select(Describe))}).");
    }

    /// <summary>A float32 initializer's values (from <c>float_data</c> or little-endian <c>raw_data</c>) and dimensions.</summary>
    public (float[] Values, long[] Dims) Floats(string name)
    {
        if (!_initializers.TryGetValue(name, out var tensor))
        {
            throw new OnnxImportException($"{Path}: '{name}' is not an initializer (weights must be constants of the graph).");
        }

        if (tensor.DataType != FloatType)
        {
            throw new OnnxImportException($"{Path}: initializer '{name}' has ONNX data type {tensor.DataType}; only float32 (1) is supported.");
        }

        var dims = tensor.Dims.ToArray();
        var count = dims.Aggregate(1L, (a, d) => a * d);
        float[] values;
        if (!tensor.RawData.IsEmpty)
        {
            if (tensor.RawData.Length != count * sizeof(float))
            {
                throw new OnnxImportException($"{Path}: initializer '{name}' holds {tensor.RawData.Length} bytes for {count} floats.");
            }

            values = MemoryMarshal.Cast<byte, float>(tensor.RawData.Span).ToArray();
        }
        else
        {
            if (tensor.FloatData.Count != count)
            {
                throw new OnnxImportException($"{Path}: initializer '{name}' holds {tensor.FloatData.Count} floats; its dims [{string.Join(", ", dims)}] need {count}.");
            }

            values = [.. tensor.FloatData];
        }

        return (values, dims);
    }

    public static AttributeProto? Attribute(NodeProto node, string name) => node.Attribute.FirstOrDefault(a => a.Name == name);

    public static long[] Ints(NodeProto node, string name, long[] fallback) =>
        Attribute(node, name) is { } a ? [.. a.Ints] : fallback;

    public static string Describe(NodeProto node) =>
        $"{node.OpType} '{(node.Name.Length > 0 ? node.Name : node.Output.FirstOrDefault())}'";
}
