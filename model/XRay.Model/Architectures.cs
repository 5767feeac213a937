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

    /// <summary>
    /// CNTK's ImageNet ResNet-18 (the one <c>Microsoft.ML.DnnImageFeaturizer.ResNet18</c> ships): basic blocks
    /// [2, 2, 2, 3], a 224x224 mean image subtracted from 0..255 RGB input. Weights come from its ONNX file
    /// (<see cref="Onnx.CntkResNetImporter"/>).
    /// </summary>
    public const string ResNet18Cntk = "resnet18_cntk";

    /// <summary><see cref="ResNet18Cntk"/> on one gray channel: the first convolution summed over R, G and B (exact for gray images).</summary>
    public const string ResNet18CntkGray = "resnet18_cntk_gray";

    public static IReadOnlyList<string> Names { get; } =
        Array.AsReadOnly([SmallCnn, ResNet18, ResNet50, DenseNet121, ResNet18Cntk, ResNet18CntkGray]);

    /// <summary>Channels of the network's input: 1 for <see cref="ResNet18CntkGray"/>, else 3.</summary>
    public static int InputChannels(string architecture) => architecture == ResNet18CntkGray ? 1 : 3;

    /// <summary>
    /// The preprocessing the architecture's pretrained weights expect: for the CNTK ResNets 0..255 pixel values
    /// (mean 0, std 1/255; the mean image is the network's own first step) at 224 px, one channel for the gray stem;
    /// otherwise ImageNet's normalisation at <paramref name="cropSize"/>.
    /// </summary>
    public static PreprocessingSpec DefaultPreprocessing(string architecture, int cropSize = 224, int? resizeSize = null) => architecture switch
    {
        ResNet18Cntk or ResNet18CntkGray => new PreprocessingSpec
        {
            CropSize = cropSize,
            ResizeSize = resizeSize ?? cropSize,
            Mean = new float[InputChannels(architecture)],
            Std = Enumerable.Repeat(1f / 255, InputChannels(architecture)).ToArray(),
            Color = InputChannels(architecture) == 1 ? PreprocessingSpec.Grayscale : PreprocessingSpec.GrayscaleReplicated,
        },
        _ => new PreprocessingSpec { CropSize = cropSize, ResizeSize = resizeSize ?? cropSize },
    };

    /// <summary>The state-dict prefix of the final <c>Linear</c> layer (the classification head): <c>fc.</c> or <c>classifier.</c>.</summary>
    public static string HeadPrefix(string architecture) => architecture switch
    {
        DenseNet121 or SmallCnn => "classifier.",
        _ => "fc.",
    };

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
            ResNet18Cntk => ResNetNetwork.ResNet18Cntk(numClasses, gray: false),
            ResNet18CntkGray => ResNetNetwork.ResNet18Cntk(numClasses, gray: true),
            _ => throw new ArgumentException(
                $"Unknown architecture '{architecture}'; known: {string.Join(", ", Names)}.", nameof(architecture)),
        };
    }
}
