using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace XRay.Model;

/// <summary>
/// A checkpoint is a folder holding <c>manifest.json</c> (a <see cref="ModelManifest"/>) and <c>weights.bin</c>
/// (TorchSharp's <c>Module.save</c> format: the state dict, parameters and batch-norm buffers, float32).
/// Both directions check the weights against the manifest's architecture and class count, naming the
/// first parameter that does not fit. With <see cref="ModelManifest.BaseWeights"/> set, <c>weights.bin</c> holds only
/// the tensors that differ from the base (always the classification head), which keeps a fine-tuned head small.
/// </summary>
public static class Checkpoint
{
    public const string ManifestFileName = "manifest.json";
    public const string WeightsFileName = "weights.bin";

    /// <summary>Writes both files (each to a temporary name first, then moved into place). Creates the folder.</summary>
    /// <exception cref="ArgumentException">The manifest is invalid, or the network's state does not fit the manifest's architecture.</exception>
    public static void Save(string directory, ModelManifest manifest, nn.Module network)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(manifest);
        ArgumentNullException.ThrowIfNull(network);
        manifest.Validate();

        var actual = network.state_dict().ToDictionary(kv => kv.Key, kv => new TensorInfo(kv.Value.dtype, kv.Value.shape));
        var mismatch = Compare(manifest, actual);
        if (mismatch is not null)
        {
            throw new ArgumentException($"The network does not fit the manifest: {mismatch}", nameof(network));
        }

        var unchanged = manifest.BaseWeights is null ? [] : TensorsEqualToBase(manifest, network);

        Directory.CreateDirectory(directory);
        var weightsPath = Path.Combine(directory, WeightsFileName);
        var manifestPath = Path.Combine(directory, ManifestFileName);
        var weightsTemp = weightsPath + ".tmp";
        var manifestTemp = manifestPath + ".tmp";
        network.save(weightsTemp, skip: unchanged);
        File.WriteAllText(manifestTemp, manifest.ToJson(), Encoding.UTF8);
        File.Move(weightsTemp, weightsPath, overwrite: true);
        File.Move(manifestTemp, manifestPath, overwrite: true);
    }

    /// <summary>Reads and validates the manifest, checks the weights fit, and returns the network in eval mode on the CPU.</summary>
    /// <exception cref="FileNotFoundException">A file is missing.</exception>
    /// <exception cref="InvalidDataException">The manifest is malformed or invalid, or the weights do not fit it.</exception>
    public static LoadedModel Load(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        var manifestPath = Path.Combine(directory, ManifestFileName);
        var weightsPath = Path.Combine(directory, WeightsFileName);
        if (!File.Exists(manifestPath))
        {
            throw new FileNotFoundException($"Checkpoint '{directory}' has no {ManifestFileName}.", manifestPath);
        }

        if (!File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"Checkpoint '{directory}' has no {WeightsFileName}.", weightsPath);
        }

        ModelManifest manifest;
        try
        {
            manifest = ModelManifest.FromJson(File.ReadAllText(manifestPath));
            manifest.Validate();
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            throw new InvalidDataException($"{manifestPath}: {e.Message}", e);
        }

        Dictionary<string, TensorInfo> stored;
        try
        {
            stored = ReadWeightsHeader(weightsPath);
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or FormatException)
        {
            throw new InvalidDataException($"{weightsPath} is not a TorchSharp state dict: {e.Message}", e);
        }

        var mismatch = Compare(manifest, stored, partial: manifest.BaseWeights is not null);
        if (mismatch is not null)
        {
            throw new InvalidDataException($"{weightsPath} does not fit {manifestPath}: {mismatch}");
        }

        using var weights = File.OpenRead(weightsPath);
        return CreateNetwork(manifest, weights);
    }

    /// <summary>
    /// The network of a validated manifest with weights that <see cref="Compare"/> accepted: the base (if any), then
    /// <paramref name="weights"/> over it. Eval mode, CPU.
    /// </summary>
    internal static LoadedModel CreateNetwork(ModelManifest manifest, Stream weights)
    {
        var network = manifest.BaseWeights is null
            ? Architectures.CreateUninitialised(manifest.Architecture, manifest.ClassNames.Count)
            : CreateBase(manifest);
        try
        {
            network.load(weights, strict: manifest.BaseWeights is null);
            network.eval();
            return new LoadedModel(manifest, network);
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    private static nn.Module<Tensor, Tensor> CreateBase(ModelManifest manifest)
    {
        var backbone = Onnx.CntkResNetImporter.BundledBackbone;
        try
        {
            return Onnx.CntkResNetImporter.Create(
                backbone,
                Onnx.CntkResNetImporter.MeanImageBeside(backbone),
                gray: manifest.Architecture == Architectures.ResNet18CntkGray,
                manifest.ClassNames.Count);
        }
        catch (Onnx.OnnxImportException e)
        {
            throw new InvalidDataException(
                $"Model '{manifest.Name}' is stored relative to the base weights '{manifest.BaseWeights}', which could not be read " +
                $"(the build copies them from the Microsoft.ML.DnnImageFeaturizer.ResNet18 package): {e.Message}", e);
        }
    }

    /// <summary>Names of the tensors of <paramref name="network"/> that are bit-for-bit those of the manifest's base; never the head.</summary>
    private static List<string> TensorsEqualToBase(ModelManifest manifest, nn.Module network)
    {
        var reference = BaseStates.GetOrAdd(manifest.Architecture, _ => new Lazy<Dictionary<string, Tensor>>(() => BaseState(manifest))).Value;
        using var noGrad = no_grad();
        return network.state_dict()
            .Where(kv => reference.TryGetValue(kv.Key, out var b) && b.dtype == kv.Value.dtype && b.shape.SequenceEqual(kv.Value.shape)
                && b.allclose(kv.Value.cpu(), rtol: 0, atol: 0))
            .Select(kv => kv.Key)
            .ToList();
    }

    /// <summary>
    /// The base's tensors without the head, per architecture: importing the ONNX file takes about a second, and a training
    /// run saves a checkpoint every epoch. Built on first use by <see cref="Save"/> (never by <see cref="Load"/>) and kept
    /// for the process.
    /// </summary>
    private static readonly ConcurrentDictionary<string, Lazy<Dictionary<string, Tensor>>> BaseStates = new(StringComparer.Ordinal);

    private static Dictionary<string, Tensor> BaseState(ModelManifest manifest)
    {
        using var baseNetwork = CreateBase(manifest);
        var head = Architectures.HeadPrefix(manifest.Architecture);
        return baseNetwork.state_dict()
            .Where(kv => !kv.Key.StartsWith(head, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone().DetachFromDisposeScope(), StringComparer.Ordinal);
    }

    internal readonly record struct TensorInfo(ScalarType DType, long[] Shape)
    {
        public override string ToString() => $"{DType}[{string.Join(", ", Shape)}]";
    }

    /// <summary>
    /// Null when <paramref name="actual"/> is exactly the state of the manifest's architecture (or, when
    /// <paramref name="partial"/>, a part of it that includes the head); otherwise the first difference.
    /// </summary>
    internal static string? Compare(ModelManifest manifest, IReadOnlyDictionary<string, TensorInfo> actual, bool partial = false)
    {
        var numClasses = manifest.ClassNames.Count;
        Dictionary<string, TensorInfo> expected;
        using (var template = Architectures.CreateUninitialised(manifest.Architecture, numClasses))
        {
            expected = template.state_dict().ToDictionary(kv => kv.Key, kv => new TensorInfo(kv.Value.dtype, kv.Value.shape));
        }

        var what = $"architecture '{manifest.Architecture}' with {numClasses} classes";
        foreach (var (name, info) in expected)
        {
            if (!actual.TryGetValue(name, out var got))
            {
                if (partial && !name.StartsWith(Architectures.HeadPrefix(manifest.Architecture), StringComparison.Ordinal))
                {
                    continue;
                }

                return $"{what} has parameter '{name}' {info}, which the weights lack.";
            }

            if (got.DType != info.DType || !got.Shape.AsSpan().SequenceEqual(info.Shape))
            {
                return $"parameter '{name}' is {got} in the weights but {info} in {what}.";
            }
        }

        var extra = actual.Keys.FirstOrDefault(k => !expected.ContainsKey(k));
        return extra is null ? null : $"the weights have parameter '{extra}' {actual[extra]}, which {what} lacks.";
    }

    /// <summary>
    /// Names, dtypes and shapes of a <c>Module.save</c> file, skipping the data: an entry count, then per entry
    /// the name (BinaryWriter string), dtype, rank and dimensions (unsigned LEB128) and the raw bytes.
    /// </summary>
    internal static Dictionary<string, TensorInfo> ReadWeightsHeader(string path)
    {
        using var stream = File.OpenRead(path);
        using var reader = new BinaryReader(stream, Encoding.UTF8);
        var count = ReadLeb128(reader);
        if (count > 100_000)
        {
            throw new FormatException($"implausible entry count {count}");
        }

        var result = new Dictionary<string, TensorInfo>((int)count, StringComparer.Ordinal);
        for (var i = 0; i < count; i++)
        {
            var name = reader.ReadString();
            var dtype = (ScalarType)ReadLeb128(reader);
            var rank = ReadLeb128(reader);
            if (rank > 16)
            {
                throw new FormatException($"entry '{name}' has implausible rank {rank}");
            }

            var shape = new long[rank];
            var elements = 1L;
            for (var d = 0; d < rank; d++)
            {
                shape[d] = ReadLeb128(reader);
                elements = checked(elements * shape[d]);
            }

            var bytes = checked(elements * ElementSize(dtype, name));
            if (stream.Position + bytes > stream.Length)
            {
                throw new EndOfStreamException($"entry '{name}' needs {bytes} bytes; the file ends first");
            }

            stream.Seek(bytes, SeekOrigin.Current);
            if (!result.TryAdd(name, new TensorInfo(dtype, shape)))
            {
                throw new FormatException($"entry '{name}' appears twice");
            }
        }

        if (stream.Position != stream.Length)
        {
            throw new FormatException($"{stream.Length - stream.Position} unexpected bytes after the last entry");
        }

        return result;
    }

    private static long ReadLeb128(BinaryReader reader)
    {
        long value = 0;
        for (var shift = 0; shift < 63; shift += 7)
        {
            var b = reader.ReadByte();
            value |= (long)(b & 0x7F) << shift;
            if ((b & 0x80) == 0)
            {
                return value;
            }
        }

        throw new FormatException("malformed LEB128 integer");
    }

    private static long ElementSize(ScalarType dtype, string name) => dtype switch
    {
        ScalarType.Bool or ScalarType.Byte or ScalarType.Int8 => 1,
        ScalarType.Int16 or ScalarType.Float16 or ScalarType.BFloat16 => 2,
        ScalarType.Int32 or ScalarType.Float32 => 4,
        ScalarType.Int64 or ScalarType.Float64 or ScalarType.ComplexFloat32 => 8,
        ScalarType.ComplexFloat64 => 16,
        _ => throw new FormatException($"entry '{name}' has unknown dtype code {(int)dtype}"),
    };
}
