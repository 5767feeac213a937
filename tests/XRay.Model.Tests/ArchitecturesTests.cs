using TorchSharp;
using static TorchSharp.torch;

namespace XRay.Model.Tests;

public class ArchitecturesTests
{
    private const int Classes = 14;

    [Theory]
    [InlineData("small_cnn", 2)]
    [InlineData("resnet18", 2)]
    [InlineData("resnet50", 1)]
    [InlineData("densenet121", 1)]
    [InlineData("resnet18_cntk", 2)]
    [InlineData("resnet18_cntk_gray", 2)]
    public void Create_ForwardGivesOneLogitPerClassPerImage(string architecture, int batch)
    {
        using var network = Architectures.Create(architecture, Classes);
        network.eval();
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();

        var logits = network.call(randn(batch, Architectures.InputChannels(architecture), 224, 224));

        Assert.Equal([batch, Classes], logits.shape);
        Assert.Equal(ScalarType.Float32, logits.dtype);
        Assert.True(isfinite(logits).all().item<bool>());
    }

    [Fact]
    public void Names_ListsEveryArchitecture()
    {
        Assert.Equal(["small_cnn", "resnet18", "resnet50", "densenet121", "resnet18_cntk", "resnet18_cntk_gray"], Architectures.Names);
    }

    [Fact]
    public void ResNet18Cntk_IsResNet18WithAThirdBlockInTheLastStage_AndAMeanImageStem()
    {
        using var rgb = Architectures.Create(Architectures.ResNet18Cntk, Classes);
        using var gray = Architectures.Create(Architectures.ResNet18CntkGray, Classes);
        var names = rgb.state_dict().Keys.ToHashSet();
        Assert.Contains("layer4.2.conv2.weight", names);
        Assert.DoesNotContain("layer4.3.conv1.weight", names);
        Assert.DoesNotContain("layer3.2.conv1.weight", names);
        // torchvision's ResNet-18 plus one 512-channel basic block (2 x 3x3x512x512 convolutions, 2 batch norms).
        Assert.Equal(11_176_512L + 2 * 512 * 512 * 9 + 4 * 512 + 512 * Classes + Classes, CountParameters(rgb));
        Assert.Equal([1L, 3, 224, 224], rgb.state_dict()["input_mean"].shape);
        Assert.Equal([64L, 1, 7, 7], gray.state_dict()["conv1.weight"].shape);
        Assert.Equal([1L, 64, 112, 112], gray.state_dict()["stem_offset"].shape);

        // The mean image ties the stem to 224 x 224 input; another size is refused with a message, not a broadcast error.
        using var noGrad = no_grad();
        rgb.eval();
        using var small = randn(1, 3, 192, 192);
        var e = Assert.Throws<ArgumentException>(() => rgb.call(small));
        Assert.Contains("224x224 mean image", e.Message);
    }

    [Fact]
    public void Create_UnknownName_ThrowsArgumentExceptionListingKnownNames()
    {
        var e = Assert.Throws<ArgumentException>(() => Architectures.Create("vgg16", Classes));
        Assert.Contains("vgg16", e.Message);
        foreach (var name in Architectures.Names)
        {
            Assert.Contains(name, e.Message);
        }
    }

    [Fact]
    public void Create_NoClasses_Throws()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Architectures.Create("small_cnn", 0));
    }

    [Fact]
    public void DenseNet121_HasTorchvisionNamesAndParameterCount()
    {
        using var network = Architectures.Create("densenet121", Classes);
        var parameters = network.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        var state = network.state_dict().Keys.ToHashSet();

        Assert.Equal([32, 128, 3, 3], parameters["features.denseblock4.denselayer16.conv2.weight"]);
        Assert.Equal([Classes, 1024], parameters["classifier.weight"]);
        Assert.Equal([64, 3, 7, 7], parameters["features.conv0.weight"]);
        Assert.Contains("features.norm0.running_mean", state);
        Assert.Contains("features.transition3.conv.weight", state);
        Assert.Contains("features.norm5.running_var", state);
        // torchvision densenet121: 6,953,856 feature parameters + Linear(1024, classes).
        Assert.Equal(6_953_856L + 1024 * Classes + Classes, CountParameters(network));
    }

    [Fact]
    public void ResNet18_HasTorchvisionNamesAndParameterCount()
    {
        using var network = Architectures.Create("resnet18", Classes);
        var state = network.state_dict();

        Assert.Contains("layer4.1.bn2.running_var", state.Keys);
        Assert.Contains("layer4.1.bn2.num_batches_tracked", state.Keys);
        Assert.Equal(122, state.Count); // len(torchvision.models.resnet18().state_dict())
        Assert.Contains("layer2.0.downsample.0.weight", state.Keys);
        Assert.Contains("layer2.0.downsample.1.running_mean", state.Keys);
        Assert.Equal([Classes, 512], state["fc.weight"].shape);
        // torchvision resnet18: 11,689,512 with 1000 classes, of which Linear(512, 1000) is 513,000.
        Assert.Equal(11_176_512L + 512 * Classes + Classes, CountParameters(network));
    }

    [Fact]
    public void ResNet50_HasTorchvisionNamesAndParameterCount()
    {
        using var network = Architectures.Create("resnet50", Classes);
        var state = network.state_dict();

        Assert.Contains("layer3.5.conv3.weight", state.Keys);
        Assert.Equal([256, 64, 1, 1], state["layer1.0.conv3.weight"].shape);
        Assert.Equal([128, 128, 3, 3], state["layer2.0.conv2.weight"].shape); // stride on the 3x3 (v1.5)
        // torchvision resnet50: 25,557,032 with 1000 classes, of which Linear(2048, 1000) is 2,049,000.
        Assert.Equal(23_508_032L + 2048 * Classes + Classes, CountParameters(network));
    }

    [Fact]
    public void Create_WithSameSeededGenerator_GivesSameWeights()
    {
        using var g1 = new Generator(7);
        using var g2 = new Generator(7);
        using var a = Architectures.Create("resnet18", Classes, g1);
        using var b = Architectures.Create("resnet18", Classes, g2);
        var other = b.state_dict();

        foreach (var (name, tensor) in a.state_dict())
        {
            Assert.True(tensor.equal(other[name]).all().item<bool>(), name);
        }
    }

    private static long CountParameters(nn.Module network) => network.parameters().Sum(p => p.numel());
}
