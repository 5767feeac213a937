using System.Reflection;

namespace XRay.Model;

/// <summary>
/// The server's built-in model: the checkpoint in <c>DefaultCheckpoint/</c>, embedded in this assembly: a linear head
/// for the 14 NIH findings trained by this project's <c>xray-train train</c> (docs/calibration.md has the exact commands) on
/// CNTK's ImageNet ResNet-18 with a gray stem, on all 421 sample images, with per-class calibration and thresholds chosen
/// on cross-validated predictions (<c>xray-train calibrate</c>). The checkpoint holds only the head; the backbone is imported from the ONNX file
/// that the build copies beside the program (<see cref="ModelManifest.BaseWeights"/>).
/// </summary>
public static class DefaultModel
{
    public const string Name = "xray-demo-resnet18-imagenet";
    public const string Version = "3.0.0";

    private const string ManifestResource = "XRay.Model.DefaultCheckpoint.manifest.json";
    private const string WeightsResource = "XRay.Model.DefaultCheckpoint.weights.bin";

    /// <summary>
    /// Loads the bundled checkpoint, in eval mode on the CPU. Every call returns a new network with the same
    /// weights (so the same input gives the same logits). Its manifest says what it was trained on; not for clinical use.
    /// </summary>
    public static LoadedModel Create()
    {
        var assembly = typeof(DefaultModel).Assembly;
        ModelManifest manifest;
        using (var manifestStream = Open(assembly, ManifestResource))
        using (var reader = new StreamReader(manifestStream))
        {
            manifest = ModelManifest.FromJson(reader.ReadToEnd());
        }

        using var weights = Open(assembly, WeightsResource);
        return Checkpoint.CreateNetwork(manifest, weights);
    }

    private static Stream Open(Assembly assembly, string name) =>
        assembly.GetManifestResourceStream(name)
        ?? throw new InvalidOperationException($"The bundled model resource '{name}' is missing from {assembly.GetName().Name}.");
}
