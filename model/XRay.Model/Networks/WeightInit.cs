using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace XRay.Model.Networks;

/// <summary>
/// torchvision's initialisation for ResNet and DenseNet: convolutions Kaiming-normal (fan_out, ReLU), batch norms
/// weight 1 bias 0, linear layers PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with zero bias.
/// Every draw takes the optional generator, so a seeded generator gives the same weights whatever other
/// threads do with torch's global one. (Tensor.normal_/uniform_ honour the generator; in TorchSharp 0.107
/// nn.init.normal_ ignores it.)
/// </summary>
internal static class WeightInit
{
    public static void Apply(nn.Module root, Generator? generator)
    {
        foreach (var (_, module) in root.named_modules())
        {
            Initialise(module, generator);
        }
    }

    /// <summary>Initialises one layer (convolution, batch norm or linear); other modules are left as they are.</summary>
    public static void Initialise(nn.Module module, Generator? generator)
    {
        using var noGrad = torch.no_grad();
        switch (module)
        {
            case Conv2d conv:
                var w = conv.weight!;
                var fanOut = w.shape[0] * w.shape[2] * w.shape[3];
                w.normal_(0.0, Math.Sqrt(2.0 / fanOut), generator);
                if (conv.bias is { } convBias)
                {
                    nn.init.zeros_(convBias);
                }

                break;
            case BatchNorm2d norm:
                nn.init.ones_(norm.weight!);
                nn.init.zeros_(norm.bias!);
                break;
            case Linear linear:
                var bound = 1.0 / Math.Sqrt(linear.weight!.shape[1]);
                linear.weight.uniform_(-bound, bound, generator);
                if (linear.bias is { } linearBias)
                {
                    nn.init.zeros_(linearBias);
                }

                break;
        }
    }
}
