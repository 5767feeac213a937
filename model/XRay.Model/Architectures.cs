using TorchSharp;
using XRay.Model.Networks;
using static TorchSharp.torch;

namespace XRay.Model;

/// <summary>The networks a checkpoint can name. Parameter names follow torchvision, so PyTorch state dicts map one to one.</summary>
public static class Architectures
{
    public const string SmallCnn = "small_cnn";
    public const string ResNet18 = "resnet18";
    public const string ResNet50 = "resnet50";
    public const string DenseNet121 = "densenet121";

    public static IReadOnlyList<string> Names { get; } = Array.AsReadOnly([SmallCnn, ResNet18, ResNet50, DenseNet121]);

    /// <summary>
    /// Creates the network with random initialisation (torchvision's scheme, drawn from torch's global generator);
    /// its last layer is <c>Linear(out_features = numClasses)</c> giving raw logits. The module starts in training mode.
    /// </summary>
    /// <exception cref="ArgumentException">Unknown architecture; the message lists the known ones.</exception>
    public static nn.Module<Tensor, Tensor> Create(string architecture, int numClasses) =>
        Create(architecture, numClasses, generator: null);

    /// <summary>As <see cref="Create(string, int)"/>, drawing every weight from <paramref name="generator"/> (deterministic when seeded).</summary>
    internal static nn.Module<Tensor, Tensor> Create(string architecture, int numClasses, Generator? generator)
    {
        var network = CreateUninitialised(architecture, numClasses);
        WeightInit.Apply(network, generator);
        return network;
    }

    /// <summary>The network with TorchSharp's default parameter values; for loading weights into.</summary>
    internal static nn.Module<Tensor, Tensor> CreateUninitialised(string architecture, int numClasses)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        ArgumentOutOfRangeException.ThrowIfLessThan(numClasses, 1);
        return architecture switch
        {
            SmallCnn => new SmallCnnNetwork(numClasses),
            ResNet18 => ResNetNetwork.ResNet18(numClasses),
            ResNet50 => ResNetNetwork.ResNet50(numClasses),
            DenseNet121 => new DenseNetNetwork(numClasses),
            _ => throw new ArgumentException(
                $"Unknown architecture '{architecture}'; known: {string.Join(", ", Names)}.", nameof(architecture)),
        };
    }
}
