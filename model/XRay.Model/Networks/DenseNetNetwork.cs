using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace XRay.Model.Networks;

/// <summary>
/// DenseNet-121 (Huang et al., 2017; CheXNet's backbone) as torchvision builds it: growth rate 32, blocks of
/// 6/12/24/16 layers, bottleneck width 4 x 32, compression 0.5, with torchvision's parameter names
/// (<c>features.conv0</c>, <c>features.denseblock1.denselayer1.norm1</c>, <c>features.transition1.conv</c>,
/// <c>features.norm5</c>, <c>classifier</c>).
/// </summary>
internal sealed class DenseNetNetwork : Module<Tensor, Tensor>
{
    private const int GrowthRate = 32;
    private const int BottleneckSize = 4;
    private const int InitialFeatures = 64;
    private static readonly int[] BlockConfig = [6, 12, 24, 16];

    private readonly Sequential features;
    private readonly Linear classifier;

    public DenseNetNetwork(int numClasses) : base("DenseNet121")
    {
        var layers = new List<(string, Module<Tensor, Tensor>)>
        {
            ("conv0", Conv2d(3, InitialFeatures, kernel_size: 7, stride: 2, padding: 3, bias: false)),
            ("norm0", BatchNorm2d(InitialFeatures)),
            ("relu0", ReLU(inplace: true)),
            ("pool0", MaxPool2d(kernel_size: 3, stride: 2, padding: 1)),
        };

        long numFeatures = InitialFeatures;
        for (var i = 0; i < BlockConfig.Length; i++)
        {
            layers.Add(($"denseblock{i + 1}", new DenseBlock(BlockConfig[i], numFeatures)));
            numFeatures += BlockConfig[i] * GrowthRate;
            if (i != BlockConfig.Length - 1)
            {
                layers.Add(($"transition{i + 1}", new Transition(numFeatures, numFeatures / 2)));
                numFeatures /= 2;
            }
        }

        layers.Add(("norm5", BatchNorm2d(numFeatures)));
        features = Sequential(layers);
        classifier = Linear(numFeatures, numClasses);
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = features.call(input).relu_();
        x = functional.adaptive_avg_pool2d(x, 1).flatten(1);
        return classifier.call(x).MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            features.Dispose();
            classifier.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary>BN-ReLU-Conv1x1 (to 4k channels), BN-ReLU-Conv3x3 (to k channels).</summary>
    private sealed class DenseLayer : Module<Tensor, Tensor>
    {
        private readonly BatchNorm2d norm1;
        private readonly ReLU relu1;
        private readonly Conv2d conv1;
        private readonly BatchNorm2d norm2;
        private readonly ReLU relu2;
        private readonly Conv2d conv2;

        public DenseLayer(long inputFeatures) : base(nameof(DenseLayer))
        {
            norm1 = BatchNorm2d(inputFeatures);
            relu1 = ReLU(inplace: true);
            conv1 = Conv2d(inputFeatures, BottleneckSize * GrowthRate, kernel_size: 1, bias: false);
            norm2 = BatchNorm2d(BottleneckSize * GrowthRate);
            relu2 = ReLU(inplace: true);
            conv2 = Conv2d(BottleneckSize * GrowthRate, GrowthRate, kernel_size: 3, padding: 1, bias: false);
            RegisterComponents();
        }

        public override Tensor forward(Tensor input)
        {
            using var scope = NewDisposeScope();
            var x = conv1.call(relu1.call(norm1.call(input)));
            return conv2.call(relu2.call(norm2.call(x))).MoveToOuterDisposeScope();
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                norm1.Dispose(); relu1.Dispose(); conv1.Dispose(); norm2.Dispose(); relu2.Dispose(); conv2.Dispose();
            }

            base.Dispose(disposing);
        }
    }

    /// <summary>Each layer sees the concatenation of the block input and every earlier layer's output.</summary>
    private sealed class DenseBlock : Module<Tensor, Tensor>
    {
        private readonly DenseLayer[] layers;

        public DenseBlock(int count, long inputFeatures) : base(nameof(DenseBlock))
        {
            layers = new DenseLayer[count];
            for (var i = 0; i < count; i++)
            {
                layers[i] = new DenseLayer(inputFeatures + i * GrowthRate);
                register_module($"denselayer{i + 1}", layers[i]);
            }
        }

        public override Tensor forward(Tensor input)
        {
            using var scope = NewDisposeScope();
            var features = new List<Tensor>(layers.Length + 1) { input };
            foreach (var layer in layers)
            {
                // The concatenated input of each layer is the big temporary: free it right after the layer.
                using var layerScope = NewDisposeScope();
                var concatenated = cat(features, 1);
                features.Add(layer.call(concatenated).MoveToOuterDisposeScope());
            }

            return cat(features, 1).MoveToOuterDisposeScope();
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                foreach (var layer in layers)
                {
                    layer.Dispose();
                }
            }

            base.Dispose(disposing);
        }
    }

    /// <summary>BN-ReLU-Conv1x1 (halving the channels), 2x2 average pooling.</summary>
    private sealed class Transition : Module<Tensor, Tensor>
    {
        private readonly BatchNorm2d norm;
        private readonly ReLU relu;
        private readonly Conv2d conv;
        private readonly AvgPool2d pool;

        public Transition(long inputFeatures, long outputFeatures) : base(nameof(Transition))
        {
            norm = BatchNorm2d(inputFeatures);
            relu = ReLU(inplace: true);
            conv = Conv2d(inputFeatures, outputFeatures, kernel_size: 1, bias: false);
            pool = AvgPool2d(kernel_size: 2, stride: 2);
            RegisterComponents();
        }

        public override Tensor forward(Tensor input)
        {
            using var scope = NewDisposeScope();
            return pool.call(conv.call(relu.call(norm.call(input)))).MoveToOuterDisposeScope();
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                norm.Dispose(); relu.Dispose(); conv.Dispose(); pool.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
