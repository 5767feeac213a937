using TorchSharp;
using XRay.Model.Networks;
using XRay.Model.Onnx.Proto;
using static TorchSharp.torch;

namespace XRay.Model.Onnx;

/// <summary>
/// Maps the weights of CNTK's ImageNet ResNet-18 (ONNX, as shipped in <c>Microsoft.ML.DnnImageFeaturizer.ResNet18</c>:
/// <c>ResNet18.onnx</c> and the mean image of <c>ResNetPreprocess.onnx</c>) onto <see cref="Architectures.ResNet18Cntk"/>
/// or <see cref="Architectures.ResNet18CntkGray"/> with torchvision's names. The initializers carry no meaningful names
/// (<c>Parameter91</c>, <c>Constant98</c>), so every tensor is placed by walking the graph from its input: stem convolution,
/// batch norm, max-pool, then residual blocks (a block whose input also feeds a 1x1 convolution starts a new stage),
/// up to the average pool. Each convolution's kernel, stride, padding, groups and dilations, and each batch norm's
/// epsilon, are checked against the TorchSharp module; anything else is refused with the node named.
/// </summary>
public static class CntkResNetImporter
{
    /// <summary>File name of the backbone in the NuGet package (<c>tools/DnnImageModels/ResNet18Onnx/</c>).</summary>
    public const string BackboneFileName = "ResNet18.onnx";

    /// <summary>File name of the preprocessing graph holding the mean image (<c>tools/DnnImageModels/ResNetPrepOnnx/</c>).</summary>
    public const string MeanImageFileName = "ResNetPreprocess.onnx";

    /// <summary>Where the build puts both files beside the tools and tests that use them.</summary>
    public static string BundledDirectory => System.IO.Path.Combine(AppContext.BaseDirectory, "pretrained", "resnet18-imagenet-cntk");

    /// <summary>The bundled ResNet18.onnx (with its ResNetPreprocess.onnx beside it).</summary>
    public static string BundledBackbone => System.IO.Path.Combine(BundledDirectory, BackboneFileName);

    /// <summary>The ResNetPreprocess.onnx in the folder of <paramref name="backbonePath"/>, where the package and the build put it.</summary>
    public static string MeanImageBeside(string backbonePath) =>
        System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(backbonePath))!, MeanImageFileName);

    /// <summary>
    /// Creates the network with the ImageNet weights; the <c>fc</c> head (<paramref name="numClasses"/> outputs) is
    /// freshly initialised from <paramref name="generator"/>. The network is in eval mode on the CPU.
    /// </summary>
    /// <param name="backbonePath">ResNet18.onnx.</param>
    /// <param name="meanImagePath">ResNetPreprocess.onnx (its channel reordering and mean image).</param>
    /// <exception cref="OnnxImportException">A file is missing, or its graph or tensors are not the expected ResNet.</exception>
    public static nn.Module<Tensor, Tensor> Create(string backbonePath, string meanImagePath, bool gray, int numClasses, Generator? generator = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(numClasses, 1);
        var (channelOrder, meanImage) = ReadMeanImage(meanImagePath);
        var weights = ReadBackbone(backbonePath);

        var network = ResNetNetwork.ResNet18Cntk(numClasses, gray);
        try
        {
            // Only the head is drawn from the generator: every other tensor comes from the file.
            WeightInit.Initialise(network.named_modules().Single(m => m.name == "fc").module, generator);
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            var state = network.state_dict();
            var assigned = new HashSet<string>(StringComparer.Ordinal);

            void Assign(string name, Tensor value)
            {
                if (!state.TryGetValue(name, out var target))
                {
                    throw new OnnxImportException($"{backbonePath}: the graph has '{name}', which {Architectures.ResNet18Cntk} does not (more blocks than [2, 2, 2, 3]?).");
                }

                if (!target.shape.SequenceEqual(value.shape))
                {
                    throw new OnnxImportException(
                        $"{backbonePath}: '{name}' is [{string.Join(", ", value.shape)}] in the graph; the network needs [{string.Join(", ", target.shape)}].");
                }

                target.copy_(value);
                assigned.Add(name);
            }

            // conv1 reads the channels in the mean image's order (BGR); the network takes them in the input's order (RGB).
            var (stemValues, stemDims) = weights["conv1.weight"];
            using var stemOnnx = tensor(stemValues, stemDims);
            using var permutation = tensor(channelOrder.Select(i => (long)i).ToArray());
            using var stemRgb = stemOnnx.index_select(1, permutation);
            using var meanRgb = meanImage.index_select(1, permutation);
            if (gray)
            {
                Assign("conv1.weight", stemRgb.sum(1, keepdim: true));
                using var offset = nn.functional.conv2d(meanRgb, stemRgb, strides: [2, 2], padding: [3, 3]);
                Assign("stem_offset", offset);
            }
            else
            {
                Assign("conv1.weight", stemRgb);
                Assign("input_mean", meanRgb);
            }

            foreach (var (name, (values, dims)) in weights)
            {
                if (name != "conv1.weight")
                {
                    using var value = tensor(values, dims);
                    Assign(name, value);
                }
            }

            var head = Architectures.HeadPrefix(Architectures.ResNet18Cntk);
            var missing = state.Keys
                .Where(k => !k.StartsWith(head, StringComparison.Ordinal) && !k.EndsWith(".num_batches_tracked", StringComparison.Ordinal) && !assigned.Contains(k))
                .ToList();
            if (missing.Count > 0)
            {
                throw new OnnxImportException(
                    $"{backbonePath}: the graph has no tensor for {string.Join(", ", missing.Take(5))}{(missing.Count > 5 ? ", ..." : "")} (fewer blocks than [2, 2, 2, 3]?).");
            }

            network.eval();
            return network;
        }
        catch
        {
            network.Dispose();
            throw;
        }
        finally
        {
            meanImage.Dispose();
        }
    }

    /// <summary>
    /// Reads the preprocessing graph: <c>Split</c> of the input's channels, <c>Concat</c> in another order, <c>Sub</c> of a
    /// constant mean image. Returns, for each channel the backbone reads, which input channel it is, and the mean image
    /// in the backbone's channel order (<c>[1, 3, 224, 224]</c>).
    /// </summary>
    internal static (int[] ChannelOrder, Tensor MeanImage) ReadMeanImage(string path)
    {
        var graph = OnnxGraph.Load(path);
        var split = graph.OnlyConsumer(graph.InputName, "Split");
        var concat = graph.OnlyConsumer(split.Output[0], "Concat");
        if (split.Output.Count != 3 || concat.Input.Count != 3 || OnnxGraph.Attribute(concat, "axis")?.I != 1 || OnnxGraph.Attribute(split, "axis")?.I != 1)
        {
            throw new OnnxImportException($"{path}: expected a 3-way channel Split and Concat (axis 1) before the mean subtraction.");
        }

        var order = concat.Input.Select(name => split.Output.IndexOf(name)).ToArray();
        if (order.Any(i => i < 0) || order.Distinct().Count() != 3)
        {
            throw new OnnxImportException($"{path}: the Concat does not reorder the three channels of the Split.");
        }

        var sub = graph.OnlyConsumer(concat.Output[0], "Sub");
        var meanName = sub.Input.FirstOrDefault(graph.IsInitializer)
            ?? throw new OnnxImportException($"{path}: the Sub node has no constant mean image.");
        var (values, dims) = graph.Floats(meanName);
        var expected = new long[] { 1, 3, ResNetNetwork.MeanImageSize, ResNetNetwork.MeanImageSize };
        if (!dims.SequenceEqual(expected))
        {
            throw new OnnxImportException($"{path}: mean image '{meanName}' is [{string.Join(", ", dims)}]; expected [{string.Join(", ", expected)}].");
        }

        if (sub.Input[1] != meanName)
        {
            throw new OnnxImportException($"{path}: the Sub node subtracts the image from the mean; expected image minus mean.");
        }

        return (order, tensor(values, dims));
    }

    /// <summary>The backbone's tensors under torchvision names (conv1 still in the graph's channel order); no <c>fc</c>.</summary>
    internal static Dictionary<string, (float[] Values, long[] Dims)> ReadBackbone(string path)
    {
        var graph = OnnxGraph.Load(path);
        var weights = new Dictionary<string, (float[], long[])>(StringComparer.Ordinal);

        string Conv(NodeProto node, string name, int kernel, int stride)
        {
            if (node.Input.Count != 2)
            {
                throw new OnnxImportException($"{path}: {OnnxGraph.Describe(node)} ({name}) has a bias; the network's convolutions have none.");
            }

            var kernelShape = OnnxGraph.Ints(node, "kernel_shape", []);
            var strides = OnnxGraph.Ints(node, "strides", [1, 1]);
            var group = OnnxGraph.Attribute(node, "group")?.I ?? 1;
            var dilations = OnnxGraph.Ints(node, "dilations", [1, 1]);
            if (!kernelShape.SequenceEqual([kernel, kernel]) || !strides.SequenceEqual([stride, stride]) || group != 1 || dilations.Any(d => d != 1))
            {
                throw new OnnxImportException(
                    $"{path}: {OnnxGraph.Describe(node)} ({name}) is kernel [{string.Join(",", kernelShape)}] stride [{string.Join(",", strides)}] " +
                    $"group {group} dilations [{string.Join(",", dilations)}]; the network has {kernel}x{kernel} stride {stride}, group 1, no dilation.");
            }

            CheckPads(node, name, kernel, stride);
            weights[name + ".weight"] = graph.Floats(node.Input[1]);
            return node.Output[0];
        }

        void CheckPads(NodeProto node, string name, int kernel, int stride)
        {
            // Padding k/2 before; after, k/2 or (stride 2) one less. On the even sizes a 224 input gives every layer,
            // both select the same windows as PyTorch's symmetric k/2 padding.
            var pads = OnnxGraph.Ints(node, "pads", [0, 0, 0, 0]);
            var autoPad = OnnxGraph.Attribute(node, "auto_pad")?.S.ToStringUtf8() ?? "NOTSET";
            var half = kernel / 2;
            var endOk = pads.Length == 4 && pads[2] == pads[3] && (pads[2] == half || (stride == 2 && pads[2] == half - 1));
            if (autoPad is not ("NOTSET" or "") || pads.Length != 4 || pads[0] != half || pads[1] != half || !endOk)
            {
                throw new OnnxImportException(
                    $"{path}: {OnnxGraph.Describe(node)} ({name}) pads [{string.Join(",", pads)}] auto_pad {autoPad}; expected {half} before and {half} (or {half - 1} with stride 2) after.");
            }
        }

        string BatchNorm(string input, string name)
        {
            var node = graph.OnlyConsumer(input, "BatchNormalization");
            var epsilon = OnnxGraph.Attribute(node, "epsilon")?.F ?? 1e-5f;
            if (Math.Abs(epsilon - 1e-5f) > 1e-9f || node.Input.Count != 5)
            {
                throw new OnnxImportException($"{path}: {OnnxGraph.Describe(node)} ({name}) has epsilon {epsilon} and {node.Input.Count} inputs; the network's batch norms use 1e-5 with scale, bias, mean, variance.");
            }

            weights[name + ".weight"] = graph.Floats(node.Input[1]);
            weights[name + ".bias"] = graph.Floats(node.Input[2]);
            weights[name + ".running_mean"] = graph.Floats(node.Input[3]);
            weights[name + ".running_var"] = graph.Floats(node.Input[4]);
            return node.Output[0];
        }

        // Stem: conv 7x7/2, batch norm, ReLU, max-pool 3x3/2.
        var x = Conv(graph.OnlyConsumer(graph.InputName, "Conv"), "conv1", 7, 2);
        x = BatchNorm(x, "bn1");
        x = graph.OnlyConsumer(x, "Relu").Output[0];
        var pool = graph.OnlyConsumer(x, "MaxPool");
        if (!OnnxGraph.Ints(pool, "kernel_shape", []).SequenceEqual([3L, 3L]) || !OnnxGraph.Ints(pool, "strides", [1, 1]).SequenceEqual([2L, 2L]))
        {
            throw new OnnxImportException($"{path}: {OnnxGraph.Describe(pool)} is not a 3x3 stride-2 max-pool.");
        }

        CheckPads(pool, "maxpool", 3, 2);
        x = pool.Output[0];

        int stage = 0, block = 0;
        while (true)
        {
            var consumers = graph.ConsumersOf(x);
            if (consumers.Count == 1 && consumers[0].OpType == "AveragePool")
            {
                var kernel = OnnxGraph.Ints(consumers[0], "kernel_shape", []);
                if (!kernel.SequenceEqual([7L, 7L]) || graph.OutputNames.Count != 1 || graph.OutputNames[0] != consumers[0].Output[0])
                {
                    throw new OnnxImportException($"{path}: {OnnxGraph.Describe(consumers[0])} is not the final 7x7 average pool (the 512-d features).");
                }

                break;
            }

            var convs = consumers.Where(n => n.OpType == "Conv").ToList();
            var downsampleNode = convs.FirstOrDefault(n => OnnxGraph.Ints(n, "kernel_shape", []).SequenceEqual([1L, 1L]));
            var mainNode = convs.FirstOrDefault(n => OnnxGraph.Ints(n, "kernel_shape", []).SequenceEqual([3L, 3L]));
            if (mainNode is null || convs.Count != (downsampleNode is null ? 1 : 2) || consumers.Count - convs.Count > 1)
            {
                throw new OnnxImportException(
                    $"{path}: after '{x}' expected a residual block (a 3x3 convolution, optionally a 1x1 shortcut) or the average pool; " +
                    $"found {string.Join(", ", consumers.Select(OnnxGraph.Describe))}.");
            }

            if (stage == 0 || downsampleNode is not null)
            {
                (stage, block) = (stage + 1, 0);
            }

            var prefix = $"layer{stage}.{block}";
            var stride = downsampleNode is null ? 1 : 2;
            var shortcut = x;
            if (downsampleNode is not null)
            {
                shortcut = BatchNorm(Conv(downsampleNode, prefix + ".downsample.0", 1, 2), prefix + ".downsample.1");
            }

            var y = BatchNorm(Conv(mainNode, prefix + ".conv1", 3, stride), prefix + ".bn1");
            y = graph.OnlyConsumer(y, "Relu").Output[0];
            y = BatchNorm(Conv(graph.OnlyConsumer(y, "Conv"), prefix + ".conv2", 3, 1), prefix + ".bn2");
            var add = graph.OnlyConsumer(y, "Add");
            if (add.Input.Count != 2 || !add.Input.Contains(shortcut))
            {
                throw new OnnxImportException($"{path}: {OnnxGraph.Describe(add)} ({prefix}) does not add the block's shortcut '{shortcut}'.");
            }

            x = graph.OnlyConsumer(add.Output[0], "Relu").Output[0];
            block++;
        }

        return weights;
    }
}
