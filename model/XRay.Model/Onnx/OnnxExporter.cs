using System.Runtime.InteropServices;
using Google.Protobuf;
using XRay.Model.Onnx.Proto;
using static TorchSharp.torch;

namespace XRay.Model.Onnx;

/// <summary>
/// Writes a loaded model as an ONNX graph (opset <see cref="Opset"/>) that ONNX Runtime, Triton's ONNX backend or any
/// other ONNX consumer can run: input <see cref="InputName"/> <c>[batch, C, S, S]</c> (dynamic batch axis, preprocessed
/// as the manifest says), outputs <see cref="LogitsName"/> <c>[batch, classes]</c> and <see cref="ProbabilitiesName"/>
/// (their sigmoid). Batch norms are folded for inference: into the convolution before them where there is one
/// (ResNets, the small CNN, DenseNet's bottleneck), else into a per-channel scale and shift (DenseNet's pre-activation
/// norms). The preprocessing a network carries goes into the graph too: the CNTK ResNet's mean image, or its gray
/// stem's offset (folded with <c>bn1</c> into one constant added after <c>conv1</c>). The manifest travels in the
/// model's metadata under <see cref="ManifestKey"/>.
/// </summary>
/// <remarks>
/// The graph is rebuilt from the state dict's torchvision names, so it follows exactly the modules of
/// <see cref="Architectures"/>; weights are written as float32 whatever precision the network runs in.
/// </remarks>
public static class OnnxExporter
{
    public const string InputName = "input";
    public const string LogitsName = "logits";
    public const string ProbabilitiesName = "probabilities";

    /// <summary>Metadata key holding the manifest (JSON), so that a served ONNX file says what its outputs mean.</summary>
    public const string ManifestKey = "xray.manifest";

    /// <summary>ONNX operator set written (opset 17: ONNX Runtime 1.12 and later, Triton 22.08 and later).</summary>
    public const int Opset = 17;

    private const int IrVersion = 8;
    private const int FloatType = 1;

    // Every BatchNorm2d of the networks uses PyTorch's default epsilon.
    private const double BatchNormEpsilon = 1e-5;

    /// <summary>Writes <paramref name="model"/> as an ONNX file.</summary>
    public static void Export(LoadedModel model, string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var bytes = Export(model);
        File.WriteAllBytes(path, bytes);
    }

    /// <summary>The ONNX file of <paramref name="model"/>, serialised.</summary>
    /// <exception cref="ArgumentException">The architecture is not one of <see cref="Architectures.Names"/>.</exception>
    public static byte[] Export(LoadedModel model) => Build(model).ToByteArray();

    internal static ModelProto Build(LoadedModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var manifest = model.Manifest;
        var weights = new StateDict(model.Network);
        var graph = new GraphWriter(weights);
        var input = InputName;
        string logits = manifest.Architecture switch
        {
            Architectures.SmallCnn => SmallCnn(graph, input),
            Architectures.ResNet18 or Architectures.ResNet50 => ResNet(graph, input, ResNetStemOf(weights)),
            Architectures.ResNet18Cntk or Architectures.ResNet18CntkGray => ResNet(graph, input, ResNetStemOf(weights)),
            Architectures.DenseNet121 => DenseNet(graph, input),
            _ => throw new ArgumentException(
                $"Cannot export architecture '{manifest.Architecture}'; known: {string.Join(", ", Architectures.Names)}.", nameof(model)),
        };
        graph.Rename(logits, LogitsName);
        if (manifest.Calibration is { } calibration)
        {
            // The manifest's calibration, as the server applies it: sigmoid(scale * logit + offset) per class.
            var count = manifest.ClassNames.Count;
            var scale = graph.Constant("calibration_scale", calibration.Classes.Select(k => k.Scale).ToArray(), [count]);
            var offset = graph.Constant("calibration_offset", calibration.Classes.Select(k => k.Offset).ToArray(), [count]);
            var scaled = graph.Node("Mul", [LogitsName, scale], "calibration_scaled");
            graph.Node("Sigmoid", [graph.Node("Add", [scaled, offset], "calibration_shifted")], ProbabilitiesName);
        }
        else
        {
            graph.Node("Sigmoid", [LogitsName], ProbabilitiesName);
        }

        var spec = manifest.Preprocessing;
        var g = graph.Graph;
        g.Name = manifest.Name;
        g.DocString = $"{manifest.Name} {manifest.Version} ({manifest.Architecture}): raw logits and (calibrated) sigmoid probabilities per class.";
        g.Input.Add(TensorValue(InputName, new Dim("batch"), new Dim(spec.Channels), new Dim(spec.CropSize), new Dim(spec.CropSize)));
        g.Output.Add(TensorValue(LogitsName, new Dim("batch"), new Dim(manifest.ClassNames.Count)));
        g.Output.Add(TensorValue(ProbabilitiesName, new Dim("batch"), new Dim(manifest.ClassNames.Count)));

        var onnx = new ModelProto
        {
            IrVersion = IrVersion,
            ProducerName = "xray-serving",
            ProducerVersion = typeof(OnnxExporter).Assembly.GetName().Version?.ToString() ?? "",
            ModelVersion = 1,
            DocString = manifest.Description,
            Graph = g,
        };
        onnx.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        onnx.MetadataProps.Add(new StringStringEntryProto { Key = ManifestKey, Value = manifest.ToJson() });
        return onnx;
    }

    /// <summary>The manifest stored in an exported file's metadata; null when it has none.</summary>
    public static ModelManifest? ReadManifest(string path)
    {
        using var stream = File.OpenRead(path);
        var model = ModelProto.Parser.ParseFrom(stream);
        var entry = model.MetadataProps.FirstOrDefault(p => p.Key == ManifestKey);
        return entry is null ? null : ModelManifest.FromJson(entry.Value);
    }

    private enum Stem { Plain, MeanImage, GrayMeanImage }

    private static Stem ResNetStemOf(StateDict weights) =>
        weights.Has("input_mean") ? Stem.MeanImage : weights.Has("stem_offset") ? Stem.GrayMeanImage : Stem.Plain;

    private static string SmallCnn(GraphWriter g, string x)
    {
        for (var stage = 1; g.Weights.Has($"features.conv{stage}.weight"); stage++)
        {
            x = g.Relu(g.ConvBn(x, $"features.conv{stage}", $"features.bn{stage}", stride: 2));
        }

        return g.Head(g.GlobalPool(x), "classifier");
    }

    private static string ResNet(GraphWriter g, string x, Stem stem)
    {
        switch (stem)
        {
            case Stem.MeanImage:
                x = g.ConvBn(g.Node("Sub", [x, g.Constant("input_mean")]), "conv1", "bn1", stride: 2);
                break;
            case Stem.GrayMeanImage:
                // bn1(conv1(x) - offset) = conv1'(x) + (shift - scale * offset): a spatially varying bias, one Add.
                var (scale, shift) = g.Weights.BatchNorm("bn1");
                var (offset, offsetDims) = g.Weights.Floats("stem_offset");
                var bias = new float[offset.Length];
                var plane = offset.Length / scale.Length;
                for (var i = 0; i < offset.Length; i++)
                {
                    var c = i / plane;
                    bias[i] = (float)(shift[c] - scale[c] * offset[i]);
                }

                x = g.Node("Add", [g.Conv(x, "conv1", stride: 2, scale: scale, bias: null), g.Constant("stem_bias", bias, offsetDims)]);
                break;
            default:
                x = g.ConvBn(x, "conv1", "bn1", stride: 2);
                break;
        }

        x = g.MaxPool(g.Relu(x));
        for (var layer = 1; g.Weights.Has($"layer{layer}.0.conv1.weight"); layer++)
        {
            for (var block = 0; g.Weights.Has($"layer{layer}.{block}.conv1.weight"); block++)
            {
                var p = $"layer{layer}.{block}";
                var stride = block == 0 && layer > 1 ? 2 : 1;
                string h;
                if (g.Weights.Has($"{p}.conv3.weight"))
                {
                    // Bottleneck (torchvision v1.5: the stride on the 3x3).
                    h = g.Relu(g.ConvBn(x, $"{p}.conv1", $"{p}.bn1", stride: 1));
                    h = g.Relu(g.ConvBn(h, $"{p}.conv2", $"{p}.bn2", stride));
                    h = g.ConvBn(h, $"{p}.conv3", $"{p}.bn3", stride: 1);
                }
                else
                {
                    h = g.Relu(g.ConvBn(x, $"{p}.conv1", $"{p}.bn1", stride));
                    h = g.ConvBn(h, $"{p}.conv2", $"{p}.bn2", stride: 1);
                }

                var shortcut = g.Weights.Has($"{p}.downsample.0.weight")
                    ? g.ConvBn(x, $"{p}.downsample.0", $"{p}.downsample.1", stride)
                    : x;
                x = g.Relu(g.Node("Add", [h, shortcut]));
            }
        }

        return g.Head(g.GlobalPool(x), "fc");
    }

    private static string DenseNet(GraphWriter g, string x)
    {
        x = g.MaxPool(g.Relu(g.ConvBn(x, "features.conv0", "features.norm0", stride: 2)));
        for (var block = 1; g.Weights.Has($"features.denseblock{block}.denselayer1.conv1.weight"); block++)
        {
            var features = new List<string> { x };
            for (var layer = 1; g.Weights.Has($"features.denseblock{block}.denselayer{layer}.conv1.weight"); layer++)
            {
                var p = $"features.denseblock{block}.denselayer{layer}";
                var concatenated = features.Count == 1 ? features[0] : g.Concat(features);
                var h = g.Relu(g.Affine(concatenated, $"{p}.norm1"));
                h = g.Relu(g.ConvBn(h, $"{p}.conv1", $"{p}.norm2", stride: 1));
                features.Add(g.Conv(h, $"{p}.conv2", stride: 1));
            }

            x = g.Concat(features);
            var t = $"features.transition{block}";
            if (g.Weights.Has($"{t}.conv.weight"))
            {
                x = g.Relu(g.Affine(x, $"{t}.norm"));
                x = g.Node("AveragePool", [g.Conv(x, $"{t}.conv", stride: 1)], null,
                    GraphWriter.Ints("kernel_shape", 2, 2), GraphWriter.Ints("strides", 2, 2));
            }
        }

        x = g.Relu(g.Affine(x, "features.norm5"));
        return g.Head(g.GlobalPool(x), "classifier");
    }

    private readonly record struct Dim(long Value, string Param)
    {
        public Dim(long value) : this(value, "") { }
        public Dim(string param) : this(0, param) { }
    }

    private static ValueInfoProto TensorValue(string name, params Dim[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
        {
            shape.Dim.Add(d.Param.Length > 0
                ? new TensorShapeProto.Types.Dimension { DimParam = d.Param }
                : new TensorShapeProto.Types.Dimension { DimValue = d.Value });
        }

        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = FloatType, Shape = shape } },
        };
    }

    /// <summary>The network's parameters and buffers as float32 host arrays, by state-dict name.</summary>
    private sealed class StateDict
    {
        private readonly Dictionary<string, (float[] Values, long[] Dims)> _tensors = new(StringComparer.Ordinal);

        public StateDict(nn.Module<Tensor, Tensor> network)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            foreach (var (name, tensor) in network.state_dict())
            {
                if (!tensor.is_floating_point())
                {
                    continue; // num_batches_tracked
                }

                var host = tensor.detach().to(ScalarType.Float32, CPU).contiguous();
                _tensors[name] = (host.data<float>().ToArray(), host.shape);
            }
        }

        public bool Has(string name) => _tensors.ContainsKey(name);

        public (float[] Values, long[] Dims) Floats(string name) =>
            _tensors.TryGetValue(name, out var t) ? t : throw new ArgumentException($"The network has no tensor '{name}' to export.");

        /// <summary>Inference batch norm as <c>scale * x + shift</c> per channel, computed in double.</summary>
        public (double[] Scale, double[] Shift) BatchNorm(string prefix)
        {
            var gamma = Floats(prefix + ".weight").Values;
            var beta = Floats(prefix + ".bias").Values;
            var mean = Floats(prefix + ".running_mean").Values;
            var variance = Floats(prefix + ".running_var").Values;
            var scale = new double[gamma.Length];
            var shift = new double[gamma.Length];
            for (var c = 0; c < gamma.Length; c++)
            {
                scale[c] = gamma[c] / Math.Sqrt(variance[c] + BatchNormEpsilon);
                shift[c] = beta[c] - mean[c] * scale[c];
            }

            return (scale, shift);
        }
    }

    /// <summary>Appends nodes and initializers; every node output gets a fresh name.</summary>
    private sealed class GraphWriter(StateDict weights)
    {
        private int _next;

        public GraphProto Graph { get; } = new();

        public StateDict Weights { get; } = weights;

        public string Node(string op, IEnumerable<string> inputs, string? output = null, params AttributeProto[] attributes)
        {
            output ??= $"{op.ToLowerInvariant()}_{_next++}";
            var node = new NodeProto { OpType = op, Name = output };
            node.Input.AddRange(inputs);
            node.Output.Add(output);
            node.Attribute.AddRange(attributes);
            Graph.Node.Add(node);
            return output;
        }

        /// <summary>Makes the last node that produced <paramref name="from"/> produce <paramref name="to"/> instead.</summary>
        public void Rename(string from, string to)
        {
            var node = Graph.Node.Last(n => n.Output.Contains(from));
            node.Output[node.Output.IndexOf(from)] = to;
            node.Name = to;
        }

        public string Constant(string name) => Constant(name, Weights.Floats(name).Values, Weights.Floats(name).Dims);

        public string Constant(string name, float[] values, long[] dims)
        {
            var tensor = new TensorProto { Name = name, DataType = FloatType, RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(values.AsSpan())) };
            tensor.Dims.AddRange(dims);
            Graph.Initializer.Add(tensor);
            return name;
        }

        /// <summary>Convolution with the kernel's own size, padding kernel/2, no dilation; weights scaled per output channel.</summary>
        public string Conv(string x, string module, int stride, double[]? scale = null, double[]? bias = null)
        {
            var (w, dims) = Weights.Floats(module + ".weight");
            if (scale is not null)
            {
                var perChannel = w.Length / scale.Length;
                var folded = new float[w.Length];
                for (var i = 0; i < w.Length; i++)
                {
                    folded[i] = (float)(w[i] * scale[i / perChannel]);
                }

                w = folded;
            }

            var inputs = new List<string> { x, Constant(module + ".weight", w, dims) };
            if (bias is not null)
            {
                inputs.Add(Constant(module + ".bias", bias.Select(b => (float)b).ToArray(), [bias.Length]));
            }

            var kernel = dims[2];
            var pad = kernel / 2;
            return Node("Conv", inputs, null,
                Ints("kernel_shape", dims[2], dims[3]), Ints("strides", stride, stride), Ints("pads", pad, pad, pad, pad));
        }

        /// <summary>A bias-free convolution followed by a batch norm, folded into one convolution with a bias.</summary>
        public string ConvBn(string x, string conv, string bn, int stride)
        {
            var (scale, shift) = Weights.BatchNorm(bn);
            return Conv(x, conv, stride, scale, shift);
        }

        /// <summary>A batch norm with no convolution before it: <c>x * scale + shift</c> per channel.</summary>
        public string Affine(string x, string bn)
        {
            var (scale, shift) = Weights.BatchNorm(bn);
            long[] dims = [1, scale.Length, 1, 1];
            var scaled = Node("Mul", [x, Constant(bn + ".scale", scale.Select(s => (float)s).ToArray(), dims)]);
            return Node("Add", [scaled, Constant(bn + ".shift", shift.Select(s => (float)s).ToArray(), dims)]);
        }

        public string Relu(string x) => Node("Relu", [x]);

        public string MaxPool(string x) =>
            Node("MaxPool", [x], null, Ints("kernel_shape", 3, 3), Ints("strides", 2, 2), Ints("pads", 1, 1, 1, 1));

        public string Concat(IEnumerable<string> xs) => Node("Concat", xs, null, Int("axis", 1));

        public string GlobalPool(string x) => Node("Flatten", [Node("GlobalAveragePool", [x])], null, Int("axis", 1));

        /// <summary>The Linear head: <c>x W^T + b</c>.</summary>
        public string Head(string x, string module) =>
            Node("Gemm", [x, Constant(module + ".weight"), Constant(module + ".bias")], null, Int("transB", 1));

        public static AttributeProto Int(string name, long value) => new() { Name = name, I = value, Type = 2 };

        public static AttributeProto Ints(string name, params long[] values)
        {
            var attribute = new AttributeProto { Name = name, Type = 7 };
            attribute.Ints.AddRange(values);
            return attribute;
        }
    }
}
