using System.Buffers.Binary;
using System.IO.Compression;

namespace XRay.Model.Imaging;

/// <summary>
/// Decodes non-interlaced 16-bit grayscale PNGs (the usual export of DICOM radiographs) at full precision.
/// Skia reduces 16-bit PNGs to 8 bits while decoding, which would throw away the detail of 12- to 16-bit films.
/// Every other PNG goes through Skia. Follows the PNG specification (ISO/IEC 15948) sections 6 and 9.
/// </summary>
internal static class Gray16PngDecoder
{
    /// <summary>True when the IHDR says 16-bit grayscale, non-interlaced; the bytes must start with the PNG signature.</summary>
    public static bool Handles(ReadOnlySpan<byte> png) =>
        png.Length >= 33
        && png.Slice(12, 4).SequenceEqual("IHDR"u8)
        && png[24] == 16 // bit depth
        && png[25] == 0  // colour type: grayscale
        && png[28] == 0; // interlace: none

    /// <summary>Writes the image as [0, 1] floats, row-major, into a buffer of at least width x height.</summary>
    public static (int Width, int Height) Decode(ReadOnlySpan<byte> png, long maxPixels, Func<int, float[]> rent)
    {
        var width = BinaryPrimitives.ReadInt32BigEndian(png[16..]);
        var height = BinaryPrimitives.ReadInt32BigEndian(png[20..]);
        if (width <= 0 || height <= 0 || (long)width * height > maxPixels)
        {
            throw new InvalidImageException(
                $"The PNG image is {width} x {height} pixels; at most {maxPixels:N0} pixels are accepted.");
        }

        using var compressed = new MemoryStream();
        var offset = 8;
        var sawEnd = false;
        while (offset + 12 <= png.Length)
        {
            var length = BinaryPrimitives.ReadInt32BigEndian(png[offset..]);
            if (length < 0 || offset + 12L + length > png.Length)
            {
                break;
            }

            var type = png.Slice(offset + 4, 4);
            if (type.SequenceEqual("IDAT"u8))
            {
                compressed.Write(png.Slice(offset + 8, length));
            }
            else if (type.SequenceEqual("IEND"u8))
            {
                sawEnd = true;
                break;
            }

            offset += 12 + length;
        }

        if (!sawEnd)
        {
            throw new InvalidImageException($"The PNG image ({width} x {height}) is truncated: its IEND chunk is missing.");
        }

        const int bytesPerPixel = 2;
        var stride = width * bytesPerPixel;
        var previous = new byte[stride];
        var current = new byte[stride];
        var gray = rent(width * height);
        compressed.Position = 0;
        try
        {
            using var zlib = new ZLibStream(compressed, CompressionMode.Decompress);
            for (var y = 0; y < height; y++)
            {
                var filter = zlib.ReadByte();
                if (filter < 0)
                {
                    throw new InvalidImageException($"The PNG image ({width} x {height}) is truncated: image data ends at row {y}.");
                }

                zlib.ReadExactly(current);
                Unfilter(filter, current, previous, bytesPerPixel, y);
                var row = gray.AsSpan(y * width, width);
                for (var x = 0; x < width; x++)
                {
                    row[x] = BinaryPrimitives.ReadUInt16BigEndian(current.AsSpan(x * 2)) / 65535f;
                }

                (previous, current) = (current, previous);
            }
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException)
        {
            throw new InvalidImageException($"The PNG image ({width} x {height}) has corrupt or truncated image data: {e.Message}", e);
        }

        return (width, height);
    }

    private static void Unfilter(int filter, Span<byte> row, ReadOnlySpan<byte> above, int bpp, int y)
    {
        switch (filter)
        {
            case 0:
                break;
            case 1: // Sub
                for (var i = bpp; i < row.Length; i++)
                {
                    row[i] += row[i - bpp];
                }

                break;
            case 2: // Up
                for (var i = 0; i < row.Length; i++)
                {
                    row[i] += above[i];
                }

                break;
            case 3: // Average
                for (var i = 0; i < row.Length; i++)
                {
                    var left = i >= bpp ? row[i - bpp] : 0;
                    row[i] += (byte)((left + above[i]) >> 1);
                }

                break;
            case 4: // Paeth
                for (var i = 0; i < row.Length; i++)
                {
                    int a = i >= bpp ? row[i - bpp] : 0, b = above[i], c = i >= bpp ? above[i - bpp] : 0;
                    int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
                    row[i] += (byte)(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
                }

                break;
            default:
                throw new InvalidImageException($"The PNG image has an invalid row filter {filter} at row {y}.");
        }
    }
}
