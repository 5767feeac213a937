using SkiaSharp;

namespace XRay.Server.Tests.Infrastructure;

/// <summary>Seeded test pictures.</summary>
internal static class Images
{
    public static byte[] RandomPixels(int count, int seed)
    {
        var pixels = new byte[count];
        new Random(seed).NextBytes(pixels);
        return pixels;
    }

    public static float[] RandomNormalised(int count, int seed)
    {
        var random = new Random(seed);
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 4 - 2);
        return values;
    }

    /// <summary>A grayscale PNG with a smooth gradient and a bright disc, not square, so resizing and cropping matter.</summary>
    public static byte[] Png(int width, int height, int seed)
    {
        var random = new Random(seed);
        int cx = random.Next(width / 4, width * 3 / 4), cy = random.Next(height / 4, height * 3 / 4), r = Math.Min(width, height) / 6;
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque));
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                int value = (x * 255 / width + y * 128 / height) / 2;
                if ((x - cx) * (x - cx) + (y - cy) * (y - cy) < r * r) value = 230;
                bitmap.SetPixel(x, y, new SKColor((byte)value, (byte)value, (byte)value));
            }
        }
        using SKData data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }
}
