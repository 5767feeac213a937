using static TorchSharp.torch;

namespace XRay.Model;

/// <summary>A network with the manifest that says what it is. Owns the network: disposing this disposes it.</summary>
public sealed class LoadedModel : IDisposable
{
    /// <summary>Pairs a manifest with a network whose output has <c>manifest.ClassNames.Count</c> logits per image.</summary>
    /// <exception cref="ArgumentException">The manifest is invalid.</exception>
    public LoadedModel(ModelManifest manifest, nn.Module<Tensor, Tensor> network)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        ArgumentNullException.ThrowIfNull(network);
        manifest.Validate();
        Manifest = manifest;
        Network = network;
    }

    public ModelManifest Manifest { get; }

    public nn.Module<Tensor, Tensor> Network { get; }

    public void Dispose() => Network.Dispose();
}
