using Google.Protobuf;
using SkiaSharp;
using XRay.Client;
using XRay.Contracts.V1;

namespace XRay.LoadTest.Payloads;

/// <summary>What each request carries.</summary>
public enum PayloadKind
{
    /// <summary>A normalised float32 tensor: the server only copies it into the batch.</summary>
    Float32,

    /// <summary>A 0..255 uint8 tensor: the server normalises it (4x smaller on the wire than float32).</summary>
    UInt8,

    /// <summary>Encoded PNG/JPEG: the server decodes, resizes and normalises it (the full preprocessing path).</summary>
    Png,
}

/// <summary>How to build the request payloads.</summary>
public sealed record PayloadSpec
{
    public PayloadKind Kind { get; init; } = PayloadKind.Float32;

    /// <summary>Images in each request (default 1): a client-side batch.</summary>
    public int ImagesPerRequest { get; init; } = 1;

    /// <summary>Tensor channels, 1 (grayscale; the server replicates it) or 3 (default 1).</summary>
    public int Channels { get; init; } = 1;

    /// <summary>PNG/JPEG files (or folders of them) to send or to turn into tensors; empty: generate images.</summary>
    public IReadOnlyList<string> Files { get; init; } = [];

    /// <summary>Distinct generated requests cycled through (default 8).</summary>
    public int Variants { get; init; } = 8;

    /// <summary>Side of generated PNGs in pixels (default 1024, as the NIH ChestX-ray14 images).</summary>
    public int PngSize { get; init; } = 1024;

    public int Seed { get; init; } = 1;

    public void Validate()
    {
        if (ImagesPerRequest is < 1 or > 1024) throw new ArgumentException($"images per request must be in [1, 1024]; got {ImagesPerRequest}.");
        if (Channels is not (1 or 3)) throw new ArgumentException($"channels must be 1 or 3; got {Channels}.");
        if (Variants is < 1 or > 1024) throw new ArgumentException($"variants must be in [1, 1024]; got {Variants}.");
        if (PngSize is < 16 or > 8192) throw new ArgumentException($"PNG size must be in [16, 8192]; got {PngSize}.");
    }
}

/// <summary>
/// Requests built once and cycled through, so the load tester spends its CPU on calls, not on making images.
/// <see cref="Next"/> hands out a new request message sharing the immutable payload (streams set request ids).
/// </summary>
public sealed class PayloadPool
{
    private static readonly string[] ImageExtensions = [".png", ".jpg", ".jpeg"];
    private readonly ClassifyRequest[] _prototypes;
    private long _next;

    private PayloadPool(PayloadSpec spec, ClassifyRequest[] prototypes, string source)
    {
        Spec = spec;
        _prototypes = prototypes;
        Source = source;
        RequestBytes = (long)prototypes.Average(p => p.CalculateSize());
    }

    public PayloadSpec Spec { get; }

    public int ImagesPerRequest => Spec.ImagesPerRequest;

    /// <summary>"generated" or "files (N)".</summary>
    public string Source { get; }

    /// <summary>Mean serialised request size.</summary>
    public long RequestBytes { get; }

    public int Count => _prototypes.Length;

    /// <summary>The next request, round-robin over the pool. Thread-safe.</summary>
    public ClassifyRequest Next()
    {
        ClassifyRequest prototype = _prototypes[(int)((ulong)Interlocked.Increment(ref _next) % (ulong)_prototypes.Length)];
        return prototype.InputCase == ClassifyRequest.InputOneofCase.Tensor
            ? new ClassifyRequest { Tensor = prototype.Tensor }
            : new ClassifyRequest { Encoded = prototype.Encoded };
    }

    /// <param name="preprocessing">The served model's preprocessing (from GetModelInfo): tensor sizes, and how files become tensors.</param>
    /// <exception cref="ArgumentException">Bad spec, no image among the files, or a file that does not decode.</exception>
    public static PayloadPool Create(PayloadSpec spec, Preprocessing preprocessing)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(preprocessing);
        spec.Validate();
        string[] files = ExpandFiles(spec.Files);
        int crop = preprocessing.CropSize;
        var random = new Random(spec.Seed);

        // One "image source" per variant: encoded bytes (files or generated PNGs).
        byte[][] encoded = files.Length > 0
            ? files.Select(File.ReadAllBytes).ToArray()
            : spec.Kind == PayloadKind.Png
                ? Enumerable.Range(0, spec.Variants).Select(i => GeneratePng(spec.PngSize, spec.Seed * 7919 + i)).ToArray()
                : [];
        int variants = files.Length > 0 ? files.Length : spec.Variants;
        var prototypes = new ClassifyRequest[variants];
        for (int v = 0; v < variants; v++)
        {
            // A request with several images takes the following sources in turn.
            int[] sources = Enumerable.Range(v, spec.ImagesPerRequest).Select(i => i % variants).ToArray();
            prototypes[v] = spec.Kind switch
            {
                PayloadKind.Png => Encoded(sources.Select(s => encoded[s])),
                PayloadKind.Float32 => FloatTensor(spec, crop, sources.Select(s => encoded.Length > 0 ? Normalise(PayloadImages.Luma(encoded[s], files[s], preprocessing), preprocessing) : RandomNormalised(random, 3 * crop * crop)).ToArray()),
                PayloadKind.UInt8 => ByteTensor(spec, crop, sources.Select(s => encoded.Length > 0 ? PayloadImages.Luma(encoded[s], files[s], preprocessing) : RandomPixels(random, crop * crop)).ToArray()),
                _ => throw new ArgumentOutOfRangeException(nameof(spec), spec.Kind, null),
            };
        }
        return new PayloadPool(spec, prototypes, files.Length > 0 ? $"files ({files.Length})" : "generated");
    }

    private static string[] ExpandFiles(IReadOnlyList<string> paths)
    {
        var files = new List<string>();
        foreach (string path in paths)
        {
            if (Directory.Exists(path))
            {
                files.AddRange(Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories)
                    .Where(f => ImageExtensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                    .Order(StringComparer.Ordinal));
            }
            else if (File.Exists(path))
            {
                files.Add(path);
            }
            else
            {
                throw new FileNotFoundException($"--files: no such file or folder: {path}", path);
            }
        }
        if (paths.Count > 0 && files.Count == 0)
        {
            throw new FileNotFoundException($"--files: no PNG or JPEG files in {string.Join(", ", paths)}");
        }
        return files.ToArray();
    }

    /// <summary>The model's normalisation, (x / 255 - mean) / std, of one grayscale plane into 3 CHW planes.</summary>
    private static float[] Normalise(byte[] luma, Preprocessing preprocessing)
    {
        int plane = luma.Length;
        var chw = new float[3 * plane];
        for (int c = 0; c < 3; c++)
        {
            float mean = preprocessing.Mean[c % preprocessing.Mean.Count], std = preprocessing.Std[c % preprocessing.Std.Count];
            for (int i = 0; i < plane; i++) chw[c * plane + i] = (luma[i] / 255f - mean) / std;
        }
        return chw;
    }

    private static float[] RandomNormalised(Random random, int length)
    {
        var values = new float[length];
        for (int i = 0; i < length; i++) values[i] = (float)(random.NextDouble() * 4 - 2);
        return values;
    }

    private static byte[] RandomPixels(Random random, int length)
    {
        var pixels = new byte[length];
        random.NextBytes(pixels);
        return pixels;
    }

    private static ClassifyRequest Encoded(IEnumerable<byte[]> images)
    {
        var encoded = new EncodedImages();
        encoded.Images.AddRange(images.Select(ByteString.CopyFrom));
        return new ClassifyRequest { Encoded = encoded };
    }

    /// <summary>[C,H,W] for one image, [N,C,H,W] for several; sources are 3-plane CHW.</summary>
    private static ClassifyRequest FloatTensor(PayloadSpec spec, int crop, float[][] images)
    {
        int plane = crop * crop, perImage = spec.Channels * plane;
        var data = new float[images.Length * perImage];
        for (int i = 0; i < images.Length; i++)
        {
            images[i].AsSpan(0, perImage).CopyTo(data.AsSpan(i * perImage));
        }
        return new ClassifyRequest { Tensor = Tensors.Float32(data, Shape(images.Length, spec.Channels, crop)) };
    }

    /// <summary>Sources are one grayscale plane each, replicated when 3 channels are asked for.</summary>
    private static ClassifyRequest ByteTensor(PayloadSpec spec, int crop, byte[][] images)
    {
        int plane = crop * crop, perImage = spec.Channels * plane;
        var data = new byte[images.Length * perImage];
        for (int i = 0; i < images.Length; i++)
        {
            for (int c = 0; c < spec.Channels; c++)
            {
                images[i].AsSpan(0, plane).CopyTo(data.AsSpan(i * perImage + c * plane));
            }
        }
        return new ClassifyRequest { Tensor = Tensors.UInt8(data, Shape(images.Length, spec.Channels, crop)) };
    }

    private static long[] Shape(int images, int channels, int crop) =>
        images == 1 ? [channels, crop, crop] : [images, channels, crop, crop];

    /// <summary>A grayscale radiograph-like picture: smooth gradients, a bright disc, film grain (so PNG compresses as real ones do).</summary>
    internal static byte[] GeneratePng(int size, int seed)
    {
        var random = new Random(seed);
        int cx = random.Next(size / 4, size * 3 / 4), cy = random.Next(size / 4, size * 3 / 4), r = size / 6;
        var pixels = new byte[size * size];
        for (int y = 0; y < size; y++)
        {
            for (int x = 0; x < size; x++)
            {
                int value = (x * 255 / size + y * 128 / size) / 2 + random.Next(-6, 7);
                if ((x - cx) * (x - cx) + (y - cy) * (y - cy) < r * r) value = 220 + random.Next(-6, 7);
                pixels[y * size + x] = (byte)Math.Clamp(value, 0, 255);
            }
        }
        using var bitmap = new SKBitmap(new SKImageInfo(size, size, SKColorType.Gray8, SKAlphaType.Opaque));
        IntPtr destination = bitmap.GetPixels();
        for (int y = 0; y < size; y++)
        {
            System.Runtime.InteropServices.Marshal.Copy(pixels, y * size, destination + y * bitmap.RowBytes, size);
        }
        using SKData data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }
}
