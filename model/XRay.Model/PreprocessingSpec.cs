using System.Text.Json.Serialization;

namespace XRay.Model;

/// <summary>
/// How an image becomes the network's input. Stored in each checkpoint's manifest so that the server
/// preprocesses exactly as the trainer did. The defaults are CheXNet's (torchvision <c>Resize</c>,
/// <c>CenterCrop</c>, ImageNet normalisation).
/// </summary>
public sealed record PreprocessingSpec
{
    /// <summary>One luma channel, copied into R, G and B: a 3-channel input.</summary>
    public const string GrayscaleReplicated = "grayscale, replicated to 3 channels";

    /// <summary>One luma channel: a 1-channel input (for networks with a gray stem).</summary>
    public const string Grayscale = "grayscale";

    /// <summary>Pixels. The shorter side is resized to this, keeping the aspect ratio. Default 224.</summary>
    public int ResizeSize { get; init; } = 224;

    /// <summary>Pixels. The resized image is centre-cropped to <c>CropSize x CropSize</c>. Default 224.</summary>
    public int CropSize { get; init; } = 224;

    /// <summary>Per-channel mean (R, G, B; one value for <see cref="Grayscale"/>) subtracted from [0, 1] pixel values. Default: ImageNet's.</summary>
    public float[] Mean { get; init; } = [0.485f, 0.456f, 0.406f];

    /// <summary>Per-channel standard deviation that mean-subtracted values are divided by (as many as <see cref="Mean"/>). Default: ImageNet's.</summary>
    public float[] Std { get; init; } = [0.229f, 0.224f, 0.225f];

    /// <summary>Colour handling: <see cref="GrayscaleReplicated"/> (3 channels) or <see cref="Grayscale"/> (1 channel).</summary>
    public string Color { get; init; } = GrayscaleReplicated;

    /// <summary>Channels of the network input: 1 for <see cref="Grayscale"/>, else 3.</summary>
    [JsonIgnore]
    public int Channels => string.Equals(Color, Grayscale, StringComparison.Ordinal) ? 1 : 3;

    /// <summary>Number of floats in one preprocessed image: <c>Channels * CropSize * CropSize</c>.</summary>
    [JsonIgnore]
    public int OutputLength => Channels * CropSize * CropSize;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        // 4096 keeps 3 * CropSize^2 far from int overflow and is far beyond any CNN input used here.
        if (CropSize is < 1 or > 4096)
        {
            throw new ArgumentException($"Preprocessing cropSize must be in [1, 4096]; got {CropSize}.");
        }

        if (ResizeSize < CropSize || ResizeSize > 8192)
        {
            throw new ArgumentException(
                $"Preprocessing resizeSize must be in [cropSize ({CropSize}), 8192]; got {ResizeSize}.");
        }

        if (!string.Equals(Color, GrayscaleReplicated, StringComparison.Ordinal) && !string.Equals(Color, Grayscale, StringComparison.Ordinal))
        {
            throw new ArgumentException(
                $"Preprocessing color '{Color}' is not supported; use '{GrayscaleReplicated}' (3 channels) or '{Grayscale}' (1 channel).");
        }

        var what = Channels == 3 ? "3 finite values (R, G, B)" : "1 finite value (gray)";
        if (Mean is null || Mean.Length != Channels || Mean.Any(m => !float.IsFinite(m)))
        {
            throw new ArgumentException($"Preprocessing mean must hold {what}.");
        }

        if (Std is null || Std.Length != Channels || Std.Any(s => !float.IsFinite(s) || s <= 0))
        {
            throw new ArgumentException($"Preprocessing std must hold {what.Replace("value", "value > 0").Replace("values", "values > 0")}.");
        }
    }
}
