using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using XRay.Model.Networks;
using static TorchSharp.torch;

namespace XRay.Model.Training;

/// <summary>
/// What a frozen backbone sees of every image: the input of the classification head (for a ResNet, the globally
/// average-pooled last stage, 512 values for a ResNet-18), for <see cref="Views"/> views of each image. View 0 of an
/// unaugmented recipe is the image as decoded; with augmentation, view <c>v</c> is the image augmented with
/// per-image parameters drawn from <c>(seed, v)</c>, so a linear probe's epoch <c>e</c> can train on view
/// <c>(e - 1) mod Views</c> exactly as if the backbone had run on that augmented batch. Computing them once makes every
/// further head (another fold, seed, epoch count or learning rate) cost seconds instead of a backbone pass per epoch.
/// </summary>
public sealed class BackboneFeatures
{
    private const int FileMagic = 0x58524246; // "XRBF"

    public BackboneFeatures(float[] values, int count, int views, int dimension)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (count < 1 || views < 1 || dimension < 1 || values.Length != (long)count * views * dimension)
        {
            throw new ArgumentException($"{values.Length} values are not {count} images x {views} views x {dimension} features.");
        }

        Values = values;
        Count = count;
        Views = views;
        Dimension = dimension;
    }

    /// <summary>Row-major <c>[Count, Views, Dimension]</c>.</summary>
    public float[] Values { get; }

    public int Count { get; }

    public int Views { get; }

    public int Dimension { get; }

    /// <summary>True for networks whose head is one linear layer on pooled features this class can compute (the ResNets).</summary>
    public static bool Supports(nn.Module<Tensor, Tensor> network) => network is ResNetNetwork;

    /// <summary>
    /// Runs the backbone of <paramref name="network"/> (eval mode, no gradients) on every image of <paramref name="set"/>,
    /// <paramref name="views"/> times with augmentation (views must be 1 when <paramref name="augmentation"/> is off).
    /// </summary>
    public static BackboneFeatures Compute(
        nn.Module<Tensor, Tensor> network,
        ImageSet set,
        Normalizer normalizer,
        AugmentationOptions augmentation,
        int views,
        int seed,
        int batchSize = 32,
        Action<int, int>? onProgress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(set);
        ArgumentNullException.ThrowIfNull(normalizer);
        ArgumentNullException.ThrowIfNull(augmentation);
        if (network is not ResNetNetwork resnet)
        {
            throw new ArgumentException($"Backbone features are computed for the ResNets only; got {network.GetType().Name}.", nameof(network));
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(views, 1);
        if (!augmentation.Enabled && views != 1)
        {
            throw new ArgumentException("Without augmentation every view is the same: use 1 view.", nameof(views));
        }

        var wasTraining = network.training;
        network.eval();
        try
        {
            using var noGrad = no_grad();
            float[]? values = null;
            var dimension = 0;
            var done = 0;
            for (var v = 0; v < views; v++)
            {
                var random = new Random(unchecked(seed * 1_000_003 + 7919 * (v + 1)));
                for (var start = 0; start < set.Count; start += batchSize)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var n = Math.Min(batchSize, set.Count - start);
                    var luma = set.Planes.narrow(0, start, n);
                    var input = normalizer.Apply(augmentation.Enabled ? RadiographAugmentation.Apply(luma, augmentation, random) : luma);
                    var features = resnet.forward_features(input).contiguous();
                    if (values is null)
                    {
                        dimension = (int)features.shape[1];
                        values = new float[(long)set.Count * views * dimension];
                    }

                    var batch = MemoryMarshal.Cast<byte, float>(features.bytes);
                    for (var i = 0; i < n; i++)
                    {
                        batch.Slice(i * dimension, dimension).CopyTo(values.AsSpan(((start + i) * views + v) * dimension, dimension));
                    }

                    done += n;
                    onProgress?.Invoke(done, set.Count * views);
                }
            }

            return new BackboneFeatures(values!, set.Count, views, dimension);
        }
        finally
        {
            if (wasTraining)
            {
                network.train();
            }
        }
    }

    /// <summary>The features of the images at <paramref name="indices"/>, in that order (all views).</summary>
    public BackboneFeatures Subset(IReadOnlyList<int> indices)
    {
        var row = Views * Dimension;
        var values = new float[(long)indices.Count * row];
        for (var i = 0; i < indices.Count; i++)
        {
            Values.AsSpan(indices[i] * row, row).CopyTo(values.AsSpan(i * row, row));
        }

        return new BackboneFeatures(values, indices.Count, Views, Dimension);
    }

    /// <summary>
    /// The cache key of a feature computation: SHA-256 over the backbone's tensors (everything but the head), the
    /// images' pixels, the preprocessing, the augmentation, the views and the seed. Any change to any of them is a miss.
    /// </summary>
    public static string Key(nn.Module<Tensor, Tensor> network, string headPrefix, ImageSet set, PreprocessingSpec spec, AugmentationOptions augmentation, int views, int seed)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(set);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (name, tensor) in network.state_dict().OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            if (name.StartsWith(headPrefix, StringComparison.Ordinal))
            {
                continue;
            }

            hash.AppendData(Encoding.UTF8.GetBytes(name));
            using var contiguous = tensor.contiguous();
            hash.AppendData(contiguous.bytes);
        }

        using (var planes = set.Planes.contiguous())
        {
            hash.AppendData(planes.bytes);
        }

        hash.AppendData(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new { spec, augmentation, views, seed, set.Count }, ModelManifest.JsonOptions)));
        return Convert.ToHexString(hash.GetHashAndReset())[..32].ToLowerInvariant();
    }

    /// <summary>Writes the features (a small header, then float32 little-endian values) to a temporary name, then moves it into place.</summary>
    public void Save(string path)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(directory);
        var temporary = path + ".tmp";
        using (var stream = File.Create(temporary))
        using (var writer = new BinaryWriter(stream))
        {
            writer.Write(FileMagic);
            writer.Write(Count);
            writer.Write(Views);
            writer.Write(Dimension);
            writer.Write(MemoryMarshal.AsBytes(Values.AsSpan()));
        }

        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>Reads a file written by <see cref="Save"/>.</summary>
    /// <exception cref="InvalidDataException">The file is not one, or is truncated.</exception>
    public static BackboneFeatures Load(string path)
    {
        using var stream = File.OpenRead(path);
        using var reader = new BinaryReader(stream);
        try
        {
            if (reader.ReadInt32() != FileMagic)
            {
                throw new InvalidDataException($"{path} is not a backbone feature file.");
            }

            int count = reader.ReadInt32(), views = reader.ReadInt32(), dimension = reader.ReadInt32();
            var length = (long)count * views * dimension;
            if (count < 1 || views < 1 || dimension < 1 || stream.Length - stream.Position != length * sizeof(float))
            {
                throw new InvalidDataException($"{path}: the header ({count} x {views} x {dimension}) does not match the file's length.");
            }

            var values = new float[length];
            stream.ReadExactly(MemoryMarshal.AsBytes(values.AsSpan()));
            return new BackboneFeatures(values, count, views, dimension);
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidDataException($"{path} is truncated.", e);
        }
    }
}

/// <summary>
/// A folder of <see cref="BackboneFeatures"/> files named by <see cref="BackboneFeatures.Key"/>: computed once, read
/// back by every later run with the same backbone, images, preprocessing and augmentation.
/// </summary>
public sealed class FeatureCache(string directory)
{
    public string Directory { get; } = directory ?? throw new ArgumentNullException(nameof(directory));

    /// <summary>The cached features under <paramref name="key"/>, or <paramref name="compute"/>'s, which are then saved.</summary>
    /// <param name="hit">True when read from the cache.</param>
    public BackboneFeatures GetOrCompute(string key, Func<BackboneFeatures> compute, out bool hit)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        ArgumentNullException.ThrowIfNull(compute);
        var path = Path.Combine(Directory, key + ".features");
        if (File.Exists(path))
        {
            try
            {
                hit = true;
                return BackboneFeatures.Load(path);
            }
            catch (InvalidDataException)
            {
                // A damaged file (an interrupted copy, a full disk): computed again and replaced.
            }
        }

        hit = false;
        var features = compute();
        features.Save(path);
        return features;
    }
}
