using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace XRay.Model;

/// <summary>The server's built-in model while no trained checkpoint is bundled.</summary>
public static class DefaultModel
{
    public const string Name = "xray-demo-small-cnn";
    public const string Version = "0.1.0";

    /// <summary>Seed of the private generator that draws every weight, so each call builds the same network.</summary>
    public const long Seed = 20_240_601;

    /// <summary>
    /// <c>small_cnn</c> over the 14 NIH findings with deterministic, untrained weights, in eval mode on the CPU.
    /// Its outputs carry no medical meaning.
    /// </summary>
    public static LoadedModel Create()
    {
        var manifest = new ModelManifest
        {
            Name = Name,
            Version = Version,
            Architecture = Architectures.SmallCnn,
            ClassNames = ChestXrayFindings.Nih14,
            Description =
                "UNTRAINED demonstration model: small_cnn with deterministic pseudo-random weights " +
                $"(seed {Seed}), never trained on any data. Its outputs are meaningless; it exists so the " +
                "service runs end to end before a trained checkpoint is bundled. Not for clinical use.",
            Training = new JsonObject
            {
                ["trained"] = false,
                ["initialisation"] = "torchvision scheme (Kaiming-normal convolutions), private generator",
                ["seed"] = Seed,
            },
        };

        using var generator = new Generator((ulong)Seed);
        var network = Architectures.Create(manifest.Architecture, manifest.ClassNames.Count, generator);
        network.eval();
        return new LoadedModel(manifest, network);
    }
}
