using System.Text.RegularExpressions;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace XRay.Model.Checkpoints;

/// <summary>
/// Weights as safetensors (Hugging Face's format: a JSON header of name, dtype, shape and offsets, then raw
/// little-endian data) under PyTorch/torchvision state-dict names, through TorchSharp.PyBridge. A DenseNet-121
/// trained in PyTorch (CheXNet- or TorchXRayVision-style) is exported with
/// <c>safetensors.torch.save_file(model.state_dict(), "model.safetensors")</c> and imported here by name;
/// files written here load in PyTorch with <c>model.load_state_dict(safetensors.torch.load_file(...))</c>.
/// Loading checks every name, shape and dtype against the architecture first and refuses a mismatch, naming it.
/// </summary>
public static partial class SafetensorsWeights
{
    public const string FileExtension = ".safetensors";

    /// <summary>Writes the network's state dict (parameters and batch-norm buffers) as safetensors.</summary>
    /// <exception cref="ArgumentException">A floating-point tensor is not float32 (convert the network back first).</exception>
    public static void Save(string path, nn.Module network)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(network);
        var wrong = network.state_dict().FirstOrDefault(kv => kv.Value.is_floating_point() && kv.Value.dtype != ScalarType.Float32);
        if (wrong.Key is not null)
        {
            throw new ArgumentException($"Tensor '{wrong.Key}' is {wrong.Value.dtype}; safetensors export writes float32 networks only.", nameof(network));
        }

        var directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(directory);
        var temporary = path + ".tmp";
        network.save_safetensors(temporary);
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>
    /// Creates <paramref name="manifest"/>'s architecture and loads the file into it (see <see cref="LoadInto"/>);
    /// returns it in eval mode.
    /// </summary>
    public static LoadedModel Import(string path, ModelManifest manifest, string? stripPrefix = null)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        manifest.Validate();
        var network = Architectures.CreateUninitialised(manifest.Architecture, manifest.ClassNames.Count);
        try
        {
            LoadInto(path, network, $"{manifest.Architecture} with {manifest.ClassNames.Count} classes", stripPrefix);
            network.eval();
            return new LoadedModel(manifest, network);
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Loads a safetensors state dict into <paramref name="network"/> after checking that it has exactly the
    /// network's tensors with the same shapes. Names starting with <paramref name="stripPrefix"/> (e.g.
    /// <c>module.</c> from <c>DataParallel</c>) lose it first; torchvision's legacy DenseNet names
    /// (<c>norm.1</c>, <c>conv.2</c>) become the current ones (<c>norm1</c>, <c>conv2</c>), as torchvision itself
    /// does; a <c>num_batches_tracked</c> counter that only one side has is not an error (PyTorch keeps it,
    /// it does not change the output). Floating-point tensors stored as float16/bfloat16/float64 are converted.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not safetensors, or a tensor is missing, unexpected, or of the wrong shape.</exception>
    public static void LoadInto(string path, nn.Module network, string? what = null, string? stripPrefix = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(network);
        what ??= "the network";
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"No safetensors file at {path}.", path);
        }

        Dictionary<string, Tensor> stored;
        try
        {
            stored = Safetensors.LoadStateDict(path);
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or ArgumentException or EndOfStreamException or NotImplementedException or IOException)
        {
            throw new InvalidDataException($"{path} is not a readable safetensors file: {e.Message}", e);
        }

        using var scope = NewDisposeScope();
        var renamed = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, value) in stored)
        {
            var key = stripPrefix is { Length: > 0 } && name.StartsWith(stripPrefix, StringComparison.Ordinal) ? name[stripPrefix.Length..] : name;
            key = LegacyDenseNetName().Replace(key, "$1$2");
            renamed[key] = value;
        }

        var expected = network.state_dict();
        var problems = new List<string>();
        foreach (var (name, tensor) in expected)
        {
            if (!renamed.TryGetValue(name, out var got))
            {
                if (!name.EndsWith("num_batches_tracked", StringComparison.Ordinal))
                {
                    problems.Add($"missing tensor '{name}' {Describe(tensor)}");
                }

                continue;
            }

            if (!got.shape.SequenceEqual(tensor.shape))
            {
                problems.Add($"tensor '{name}' is {Describe(got)} in the file but {Describe(tensor)} in {what}");
            }
            else if (got.is_floating_point() != tensor.is_floating_point())
            {
                problems.Add($"tensor '{name}' is {got.dtype} in the file but {tensor.dtype} in {what}");
            }
        }

        var unexpected = renamed.Keys
            .Where(k => !expected.ContainsKey(k) && !k.EndsWith("num_batches_tracked", StringComparison.Ordinal))
            .ToArray();
        problems.AddRange(unexpected.Take(5).Select(k => $"unexpected tensor '{k}' {Describe(renamed[k])}"));
        if (unexpected.Length > 5)
        {
            problems.Add($"... and {unexpected.Length - 5} more unexpected tensors");
        }

        if (problems.Count > 0)
        {
            var hint = unexpected.Length > 0 && CommonPrefix(unexpected) is { Length: > 0 } prefix && prefix != stripPrefix
                ? $" All unexpected names start with '{prefix}': pass it as the prefix to strip."
                : "";
            throw new InvalidDataException(
                $"{path} does not fit {what} ({problems.Count} problem(s)): {string.Join("; ", problems.Take(8))}.{hint}");
        }

        var toLoad = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, tensor) in expected)
        {
            if (renamed.TryGetValue(name, out var got))
            {
                toLoad[name] = got.to_type(tensor.dtype);
            }
        }

        // Checked above: every tensor the network has is here with its shape, except perhaps num_batches_tracked.
        network.load_state_dict(toLoad, strict: false);

        foreach (var value in stored.Values)
        {
            value.Dispose();
        }
    }

    private static string Describe(Tensor t) => $"{t.dtype}[{string.Join(", ", t.shape)}]";

    /// <summary>The dotted prefix (ending in '.') that every name shares, or "".</summary>
    private static string CommonPrefix(IReadOnlyList<string> names)
    {
        var first = names[0];
        var dot = first.IndexOf('.');
        if (dot < 0)
        {
            return "";
        }

        var prefix = first[..(dot + 1)];
        return names.All(n => n.StartsWith(prefix, StringComparison.Ordinal)) ? prefix : "";
    }

    [GeneratedRegex(@"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")]
    private static partial Regex LegacyDenseNetName();
}
