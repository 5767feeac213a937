using SkiaSharp;
using XRay.Contracts.V1;

namespace XRay.LoadTest.Payloads;

/// <summary>
/// Files made into tensor payloads the way the server prepares encoded images (grayscale, shorter side resized to
/// resize_size, centre crop), with SkiaSharp alone: the load tester carries no model code. The pixels are close to
/// the server's own decode, not identical (Skia's resampling, 8-bit luma); load tests measure speed, not predictions.
/// </summary>
internal static class PayloadImages
{
    /// <summary>One 0..255 grayscale plane of crop_size x crop_size.</summary>
    /// <exception cref="ArgumentException">The file does not decode.</exception>
    public static byte[] Luma(byte[] encoded, string file, Preprocessing preprocessing)
    {
        using SKBitmap decoded = SKBitmap.Decode(encoded) ?? throw new ArgumentException($"{file}: not a PNG or JPEG image that decodes.");
        using SKBitmap gray = decoded.Copy(SKColorType.Gray8) ?? throw new ArgumentException($"{file}: could not be converted to grayscale.");

        int resize = preprocessing.ResizeSize, crop = preprocessing.CropSize;
        double scale = (double)resize / Math.Min(gray.Width, gray.Height);
        int width = Math.Max(crop, (int)Math.Round(gray.Width * scale)), height = Math.Max(crop, (int)Math.Round(gray.Height * scale));
        using SKBitmap resized = gray.Resize(new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque), new SKSamplingOptions(SKCubicResampler.Mitchell))
            ?? throw new ArgumentException($"{file}: could not be resized.");

        var pixels = new byte[crop * crop];
        int left = (width - crop) / 2, top = (height - crop) / 2;
        ReadOnlySpan<byte> source = resized.GetPixelSpan();
        for (int y = 0; y < crop; y++)
        {
            source.Slice((top + y) * resized.RowBytes + left, crop).CopyTo(pixels.AsSpan(y * crop));
        }
        return pixels;
    }
}
