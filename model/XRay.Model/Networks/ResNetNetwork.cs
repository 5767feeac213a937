using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace XRay.Model.Networks;

/// <summary>What a ResNet does to its input before the first convolution.</summary>
internal enum ResNetStem
{
    /// <summary>torchvision's: the 3-channel input goes straight into <c>conv1</c>.</summary>
    Plain,

    /// <summary>
    /// A per-pixel mean image (buffer <c>input_mean</c>, <c>[1, 3, S, S]</c>) is subtracted from the 3-channel input
    /// first, as CNTK's ImageNet models expect.
    /// </summary>
    MeanImage,

    /// <summary>
    /// One input channel: <c>conv1</c> holds the 3-channel kernel summed over its channels, and the buffer
    /// <c>stem_offset</c> (<c>[1, 64, S/2, S/2]</c>) is subtracted from its output. For a gray image this equals the
    /// <see cref="MeanImage"/> stem on the image replicated to 3 channels, at a third of conv1's cost.
    /// </summary>
    GrayMeanImage,
}

/// <summary>
/// ResNet (He et al., 2016) as torchvision builds it (v1.5: the stride sits on the 3x3 convolution of a
/// bottleneck), with torchvision's parameter names: <c>conv1</c>, <c>bn1</c>, <c>layer1.0.conv1</c>, ...,
/// <c>layerN.0.downsample.0/1</c>, <c>fc</c>. <see cref="ResNet18Cntk"/> is the ResNet-18 of CNTK's ImageNet model
/// (a third basic block in the last stage, a mean-image stem; see <see cref="Onnx.CntkResNetImporter"/>).
/// </summary>
internal sealed class ResNetNetwork : Module<Tensor, Tensor>
{
    /// <summary>Input size of the mean-image stems: the mean image is this many pixels square.</summary>
    public const int MeanImageSize = 224;

    private readonly Conv2d conv1;
    private readonly BatchNorm2d bn1;
    private readonly ReLU relu;
    private readonly MaxPool2d maxpool;
    private readonly Sequential layer1;
    private readonly Sequential layer2;
    private readonly Sequential layer3;
    private readonly Sequential layer4;
    private readonly AdaptiveAvgPool2d avgpool;
    private readonly Linear fc;
    private readonly ResNetStem _stem;
    private readonly Tensor? input_mean;
    private readonly Tensor? stem_offset;

    private ResNetNetwork(string name, bool bottleneck, int[] blocks, int numClasses, ResNetStem stem = ResNetStem.Plain) : base(name)
    {
        var expansion = bottleneck ? 4 : 1;
        _stem = stem;
        conv1 = Conv2d(stem == ResNetStem.GrayMeanImage ? 1 : 3, 64, kernel_size: 7, stride: 2, padding: 3, bias: false);
        if (stem == ResNetStem.MeanImage)
        {
            input_mean = zeros(1, 3, MeanImageSize, MeanImageSize);
        }
        else if (stem == ResNetStem.GrayMeanImage)
        {
            stem_offset = zeros(1, 64, MeanImageSize / 2, MeanImageSize / 2);
        }

        bn1 = BatchNorm2d(64);
        relu = ReLU(inplace: true);
        maxpool = MaxPool2d(kernel_size: 3, stride: 2, padding: 1);

        long inPlanes = 64;
        Sequential MakeLayer(long planes, int count, long stride)
        {
            var layer = new List<(string, Module<Tensor, Tensor>)>();
            for (var i = 0; i < count; i++)
            {
                var blockStride = i == 0 ? stride : 1;
                Sequential? downsample = null;
                if (i == 0 && (stride != 1 || inPlanes != planes * expansion))
                {
                    downsample = Sequential(
                        ("0", Conv2d(inPlanes, planes * expansion, kernel_size: 1, stride: stride, bias: false)),
                        ("1", BatchNorm2d(planes * expansion)));
                }

                layer.Add(($"{i}", bottleneck
                    ? new Bottleneck(inPlanes, planes, blockStride, downsample)
                    : new BasicBlock(inPlanes, planes, blockStride, downsample)));
                inPlanes = planes * expansion;
            }

            return Sequential(layer);
        }

        layer1 = MakeLayer(64, blocks[0], 1);
        layer2 = MakeLayer(128, blocks[1], 2);
        layer3 = MakeLayer(256, blocks[2], 2);
        layer4 = MakeLayer(512, blocks[3], 2);
        avgpool = AdaptiveAvgPool2d(1);
        fc = Linear(512 * expansion, numClasses);
        RegisterComponents();
    }

    public static ResNetNetwork ResNet18(int numClasses) => new("ResNet18", bottleneck: false, [2, 2, 2, 2], numClasses);

    public static ResNetNetwork ResNet50(int numClasses) => new("ResNet50", bottleneck: true, [3, 4, 6, 3], numClasses);

    /// <summary>CNTK's ImageNet ResNet-18: basic blocks [2, 2, 2, 3], mean-image stem (3 channels) or its gray equivalent.</summary>
    public static ResNetNetwork ResNet18Cntk(int numClasses, bool gray) =>
        new("ResNet18Cntk", bottleneck: false, [2, 2, 2, 3], numClasses, gray ? ResNetStem.GrayMeanImage : ResNetStem.MeanImage);

    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        return fc.call(forward_features(input)).MoveToOuterDisposeScope();
    }

    /// <summary>The globally average-pooled output of the last stage, <c>[N, 512 * expansion]</c>: what <c>fc</c> sees.</summary>
    public Tensor forward_features(Tensor input)
    {
        using var scope = NewDisposeScope();
        if (_stem != ResNetStem.Plain && (input.shape[^1] != MeanImageSize || input.shape[^2] != MeanImageSize))
        {
            throw new ArgumentException(
                $"This network subtracts a {MeanImageSize}x{MeanImageSize} mean image; got input [{string.Join(", ", input.shape)}].", nameof(input));
        }

        var x = _stem == ResNetStem.MeanImage ? conv1.call(input - input_mean!) : conv1.call(input);
        if (_stem == ResNetStem.GrayMeanImage)
        {
            x = x - stem_offset!;
        }

        x = maxpool.call(relu.call(bn1.call(x)));
        x = layer4.call(layer3.call(layer2.call(layer1.call(x))));
        return avgpool.call(x).flatten(1).MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            conv1.Dispose(); bn1.Dispose(); relu.Dispose(); maxpool.Dispose();
            layer1.Dispose(); layer2.Dispose(); layer3.Dispose(); layer4.Dispose();
            avgpool.Dispose(); fc.Dispose();
            input_mean?.Dispose(); stem_offset?.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary>Two 3x3 convolutions and an identity (or 1x1 downsample) shortcut.</summary>
    private sealed class BasicBlock : Module<Tensor, Tensor>
    {
        private readonly Conv2d conv1;
        private readonly BatchNorm2d bn1;
        private readonly ReLU relu;
        private readonly Conv2d conv2;
        private readonly BatchNorm2d bn2;
        private readonly Sequential? downsample;

        public BasicBlock(long inPlanes, long planes, long stride, Sequential? downsample) : base(nameof(BasicBlock))
        {
            conv1 = Conv2d(inPlanes, planes, kernel_size: 3, stride: stride, padding: 1, bias: false);
            bn1 = BatchNorm2d(planes);
            relu = ReLU(inplace: true);
            conv2 = Conv2d(planes, planes, kernel_size: 3, stride: 1, padding: 1, bias: false);
            bn2 = BatchNorm2d(planes);
            this.downsample = downsample;
            RegisterComponents();
        }

        public override Tensor forward(Tensor input)
        {
            // A scope per block frees its intermediates as soon as the block is done, not at the end of the network.
            using var scope = NewDisposeScope();
            var identity = downsample is null ? input : downsample.call(input);
            var x = relu.call(bn1.call(conv1.call(input)));
            x = bn2.call(conv2.call(x));
            return x.add_(identity).relu_().MoveToOuterDisposeScope();
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                conv1.Dispose(); bn1.Dispose(); relu.Dispose(); conv2.Dispose(); bn2.Dispose();
                downsample?.Dispose();
            }

            base.Dispose(disposing);
        }
    }

    /// <summary>1x1 reduce, 3x3 (strided), 1x1 expand by 4, and an identity (or 1x1 downsample) shortcut.</summary>
    private sealed class Bottleneck : Module<Tensor, Tensor>
    {
        private readonly Conv2d conv1;
        private readonly BatchNorm2d bn1;
        private readonly Conv2d conv2;
        private readonly BatchNorm2d bn2;
        private readonly Conv2d conv3;
        private readonly BatchNorm2d bn3;
        private readonly ReLU relu;
        private readonly Sequential? downsample;

        public Bottleneck(long inPlanes, long planes, long stride, Sequential? downsample) : base(nameof(Bottleneck))
        {
            conv1 = Conv2d(inPlanes, planes, kernel_size: 1, bias: false);
            bn1 = BatchNorm2d(planes);
            conv2 = Conv2d(planes, planes, kernel_size: 3, stride: stride, padding: 1, bias: false);
            bn2 = BatchNorm2d(planes);
            conv3 = Conv2d(planes, planes * 4, kernel_size: 1, bias: false);
            bn3 = BatchNorm2d(planes * 4);
            relu = ReLU(inplace: true);
            this.downsample = downsample;
            RegisterComponents();
        }

        public override Tensor forward(Tensor input)
        {
            using var scope = NewDisposeScope();
            var identity = downsample is null ? input : downsample.call(input);
            var x = relu.call(bn1.call(conv1.call(input)));
            x = relu.call(bn2.call(conv2.call(x)));
            x = bn3.call(conv3.call(x));
            return x.add_(identity).relu_().MoveToOuterDisposeScope();
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                conv1.Dispose(); bn1.Dispose(); conv2.Dispose(); bn2.Dispose(); conv3.Dispose(); bn3.Dispose();
                relu.Dispose();
                downsample?.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
