using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace XRay.Model.Networks;

/// <summary>
/// A four-stage CNN (3x3 stride-2 conv, batch norm, ReLU; 16-32-64-128 channels), global average pooling and a
/// linear classifier: ~0.1 M parameters, ~50 M MACs at 224 px. For the demo model, tests and quick training runs.
/// </summary>
internal sealed class SmallCnnNetwork : Module<Tensor, Tensor>
{
    private readonly Sequential features;
    private readonly Linear classifier;

    public SmallCnnNetwork(int numClasses) : base("SmallCnn")
    {
        var stages = new List<(string, Module<Tensor, Tensor>)>();
        long inChannels = 3;
        var stage = 1;
        foreach (var outChannels in new long[] { 16, 32, 64, 128 })
        {
            stages.Add(($"conv{stage}", Conv2d(inChannels, outChannels, kernel_size: 3, stride: 2, padding: 1, bias: false)));
            stages.Add(($"bn{stage}", BatchNorm2d(outChannels)));
            stages.Add(($"relu{stage}", ReLU(inplace: true)));
            inChannels = outChannels;
            stage++;
        }

        features = Sequential(stages);
        classifier = Linear(inChannels, numClasses);
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = features.call(input);
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
}
