using System.Text.Json.Serialization;

namespace XRay.Model;

/// <summary>
/// How an image becomes the network's input. Stored in each checkpoint's manifest so that the server
/// preprocesses exactly as the trainer did. The defaults are CheXNet's (torchvision <c>Resize</c>,
/// <c>CenterCrop</c>, ImageNet normalisation).
/// </summary>
public sealed record PreprocessingSpec
{
    /// <summary>The only colour handling implemented: one luma channel, copied into R, G and B.</summary>
    public const string GrayscaleReplicated = "grayscale, replicated to 3 channels";

    /// <summary>Pixels. The shorter side is resized to this, keeping the aspect ratio. Default 224.</summary>
    public int ResizeSize { get; init; } = 224;

    /// <summary>Pixels. The resized image is centre-cropped to <c>CropSize x CropSize</c>. Default 224.</summary>
    public int CropSize { get; init; } = 224;

    /// <summary>Per-channel mean (R, G, B) subtracted from [0, 1] pixel values. Default: ImageNet's.</summary>
    public float[] Mean { get; init; } = [0.485f, 0.456f, 0.406f];

    /// <summary>Per-channel standard deviation (R, G, B) that mean-subtracted values are divided by. Default: ImageNet's.</summary>
    public float[] Std { get; init; } = [0.229f, 0.224f, 0.225f];

    /// <summary>Colour handling; only <see cref="GrayscaleReplicated"/> is supported.</summary>
    public string Color { get; init; } = GrayscaleReplicated;

    /// <summary>Number of floats in one preprocessed image: <c>3 * CropSize * CropSize</c>.</summary>
    [JsonIgnore]
    public int OutputLength => 3 * CropSize * CropSize;

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

        if (Mean is not { Length: 3 } || Mean.Any(m => !float.IsFinite(m)))
        {
            throw new ArgumentException("Preprocessing mean must hold 3 finite values (R, G, B).");
        }

        if (Std is not { Length: 3 } || Std.Any(s => !float.IsFinite(s) || s <= 0))
        {
            throw new ArgumentException("Preprocessing std must hold 3 finite values > 0 (R, G, B).");
        }

        if (!string.Equals(Color, GrayscaleReplicated, StringComparison.Ordinal))
        {
            throw new ArgumentException(
                $"Preprocessing color '{Color}' is not supported; the only supported value is '{GrayscaleReplicated}'.");
        }
    }
}
