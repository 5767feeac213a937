using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace XRay.Model.Tests;

internal static class TestModels
{
    public static ModelManifest Manifest(string architecture, int classes = 14, string name = "test-model") => new()
    {
        Name = name,
        Version = "1.2.3",
        Architecture = architecture,
        ClassNames = classes == 14 ? ChestXrayFindings.Nih14 : Enumerable.Range(0, classes).Select(i => $"class{i}").ToArray(),
    };

    /// <summary>A seeded network in eval mode, with batch-norm statistics made non-trivial so they matter to the output.</summary>
    public static LoadedModel Seeded(string architecture, int classes = 14, ulong seed = 1)
    {
        using var generator = new Generator(seed);
        var network = Architectures.Create(architecture, classes, generator);
        using (no_grad())
        {
            foreach (var (name, buffer) in network.named_buffers())
            {
                if (name.EndsWith("running_mean", StringComparison.Ordinal))
                {
                    buffer.uniform_(-0.1, 0.1, generator);
                }
                else if (name.EndsWith("running_var", StringComparison.Ordinal))
                {
                    buffer.uniform_(0.5, 1.5, generator);
                }
            }
        }

        network.eval();
        return new LoadedModel(Manifest(architecture, classes), network);
    }

    /// <summary>Deterministic input in roughly the normalised range.</summary>
    public static float[] Input(int batch, int seed, int crop = 224, int channels = 3)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, batch * channels * crop * crop).Select(_ => (float)(random.NextDouble() * 4 - 2)).ToArray();
    }

    /// <summary>Forward on the calling thread under no_grad: the reference the runner must match.</summary>
    public static float[] DirectForward(nn.Module<Tensor, Tensor> network, float[] input, int batch, int crop = 224)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var channels = input.Length / (batch * crop * crop);
        var logits = network.call(tensor(input, [batch, channels, crop, crop])).contiguous();
        return MemoryMarshal.Cast<byte, float>(logits.bytes).ToArray();
    }

    public static float MaxAbsDifference(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        return a.Zip(b, (x, y) => Math.Abs(x - y)).Max();
    }
}

/// <summary>A temporary folder removed on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("xray-model-tests-").FullName;

    public void Dispose() => Directory.Delete(Path, recursive: true);
}
