using TorchSharp;
using XRay.Model.Onnx;
using static TorchSharp.torch;

namespace XRay.Model.Training;

/// <summary>Where fine-tuning starts: weights from a checkpoint, or CNTK's ImageNet ResNet-18 from its ONNX file.</summary>
public static class InitialWeights
{
    /// <summary>
    /// The network of <paramref name="architecture"/> with <paramref name="classNames"/> outputs, holding the weights at
    /// <paramref name="path"/>: an <c>.onnx</c> file (CNTK's ResNet18.onnx; ResNetPreprocess.onnx must lie beside it)
    /// or a checkpoint folder of the same architecture. The head is drawn from <paramref name="generator"/> unless the
    /// checkpoint has exactly these classes. The network is in training mode.
    /// </summary>
    /// <exception cref="ArgumentException">The weights are of another architecture.</exception>
    /// <exception cref="OnnxImportException">The ONNX file is not the expected ResNet.</exception>
    public static nn.Module<Tensor, Tensor> Create(string path, string architecture, IReadOnlyList<string> classNames, Generator? generator)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(classNames);
        if (path.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase))
        {
            if (architecture is not (Architectures.ResNet18Cntk or Architectures.ResNet18CntkGray))
            {
                throw new ArgumentException(
                    $"ONNX weights ({path}) fit {Architectures.ResNet18Cntk} or {Architectures.ResNet18CntkGray}, not '{architecture}'.");
            }

            var imported = CntkResNetImporter.Create(path, CntkResNetImporter.MeanImageBeside(path), architecture == Architectures.ResNet18CntkGray, classNames.Count, generator);
            imported.train();
            return imported;
        }

        using var source = Checkpoint.Load(path);
        if (source.Manifest.Architecture != architecture)
        {
            throw new ArgumentException(
                $"Checkpoint '{path}' is a {source.Manifest.Architecture}; the run trains a {architecture}.");
        }

        var network = Architectures.Create(architecture, classNames.Count, generator);
        try
        {
            var keepHead = source.Manifest.ClassNames.SequenceEqual(classNames);
            var head = Architectures.HeadPrefix(architecture);
            var target = network.state_dict();
            using var noGrad = no_grad();
            foreach (var (name, value) in source.Network.state_dict())
            {
                if (keepHead || !name.StartsWith(head, StringComparison.Ordinal))
                {
                    target[name].copy_(value);
                }
            }

            network.train();
            return network;
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }
}
