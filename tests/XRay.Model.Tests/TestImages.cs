using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using SkiaSharp;

namespace XRay.Model.Tests;

/// <summary>Builds encoded test images: SkiaSharp for the common encodings, a minimal writer for 16-bit grayscale PNG.</summary>
internal static class TestImages
{
    /// <summary>An 8-bit grayscale picture with detail at every scale, so resampling differences would show.</summary>
    public static byte[,] Pattern(int width, int height)
    {
        var pixels = new byte[height, width];
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                pixels[y, x] = (byte)((x * 7 + y * 13 + (x * y) / 17) % 256);
            }
        }

        return pixels;
    }

    public static byte[] GrayPng(byte[,] gray) => Encode(gray, SKColorType.Gray8, SKEncodedImageFormat.Png);

    public static byte[] RgbPng(byte[,] gray) => Encode(gray, SKColorType.Rgb888x, SKEncodedImageFormat.Png);

    public static byte[] RgbaPng(byte[,] gray) => Encode(gray, SKColorType.Rgba8888, SKEncodedImageFormat.Png);

    public static byte[] Jpeg(byte[,] gray, int quality = 95) => Encode(gray, SKColorType.Gray8, SKEncodedImageFormat.Jpeg, quality);

    /// <summary>PNG colour type from IHDR: 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA.</summary>
    public static int PngColorType(byte[] png) => png[25];

    public static int PngBitDepth(byte[] png) => png[24];

    private static byte[] Encode(byte[,] gray, SKColorType colorType, SKEncodedImageFormat format, int quality = 100)
    {
        int height = gray.GetLength(0), width = gray.GetLength(1);
        var alphaType = colorType == SKColorType.Rgba8888 ? SKAlphaType.Unpremul : SKAlphaType.Opaque;
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, colorType, alphaType));
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                var v = gray[y, x];
                bitmap.SetPixel(x, y, new SKColor(v, v, v, 255));
            }
        }

        using var data = bitmap.Encode(format, quality);
        return data.ToArray();
    }

    /// <summary>
    /// A 16-bit grayscale PNG (colour type 0, bit depth 16), which SkiaSharp cannot encode. Row y uses filter
    /// y mod 5 (None, Sub, Up, Average, Paeth), so a decoder must implement all five.
    /// </summary>
    public static byte[] Gray16Png(ushort[,] gray)
    {
        int height = gray.GetLength(0), width = gray.GetLength(1), stride = width * 2;
        var raw = new byte[height * (1 + stride)];
        var above = new byte[stride];
        var row = new byte[stride];
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                BinaryPrimitives.WriteUInt16BigEndian(row.AsSpan(x * 2), gray[y, x]);
            }

            var filter = y % 5;
            var offset = y * (1 + stride);
            raw[offset] = (byte)filter;
            for (var i = 0; i < stride; i++)
            {
                int a = i >= 2 ? row[i - 2] : 0, b = above[i], c = i >= 2 ? above[i - 2] : 0;
                var predictor = filter switch
                {
                    1 => a,
                    2 => b,
                    3 => (a + b) >> 1,
                    4 => Paeth(a, b, c),
                    _ => 0,
                };
                raw[offset + 1 + i] = (byte)(row[i] - predictor);
            }

            (above, row) = (row, above);
        }

        using var compressed = new MemoryStream();
        using (var zlib = new ZLibStream(compressed, CompressionLevel.Fastest, leaveOpen: true))
        {
            zlib.Write(raw);
        }

        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), height);
        header[8] = 16; // bit depth
        header[9] = 0;  // grayscale

        using var png = new MemoryStream();
        png.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        WriteChunk(png, "IHDR", header);
        WriteChunk(png, "IDAT", compressed.ToArray());
        WriteChunk(png, "IEND", []);
        return png.ToArray();
    }

    /// <summary>Inserts an APP1 Exif segment holding only an Orientation tag right after the JPEG's SOI marker.</summary>
    public static byte[] WithExifOrientation(byte[] jpeg, ushort orientation)
    {
        var tiff = new byte[]
        {
            (byte)'M', (byte)'M', 0x00, 0x2A, 0x00, 0x00, 0x00, 0x08, // big-endian TIFF header, IFD0 at 8
            0x00, 0x01,                                             // one entry
            0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01,         // Orientation, SHORT, count 1
            (byte)(orientation >> 8), (byte)orientation, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,                                 // no next IFD
        };
        var payload = Encoding.ASCII.GetBytes("Exif\0\0").Concat(tiff).ToArray();
        var segment = new byte[4 + payload.Length];
        segment[0] = 0xFF;
        segment[1] = 0xE1;
        BinaryPrimitives.WriteUInt16BigEndian(segment.AsSpan(2), (ushort)(payload.Length + 2));
        payload.CopyTo(segment, 4);
        return [.. jpeg.AsSpan(0, 2), .. segment, .. jpeg.AsSpan(2)];
    }

    /// <summary>The PNG with its IHDR claiming another size (CRC fixed): a header that lies about the pixels behind it.</summary>
    public static byte[] WithPngSize(byte[] png, int width, int height)
    {
        var copy = (byte[])png.Clone();
        BinaryPrimitives.WriteInt32BigEndian(copy.AsSpan(16), width);
        BinaryPrimitives.WriteInt32BigEndian(copy.AsSpan(20), height);
        BinaryPrimitives.WriteUInt32BigEndian(copy.AsSpan(29), Crc32(copy.AsSpan(12, 17)));
        return copy;
    }

    /// <summary>The JPEG with its start-of-frame segment claiming another size.</summary>
    public static byte[] WithJpegSize(byte[] jpeg, ushort width, ushort height)
    {
        var copy = (byte[])jpeg.Clone();
        for (var i = 2; i + 9 < copy.Length; i++)
        {
            // SOF0 (baseline) or SOF2 (progressive): FF C0/C2, length, precision, height, width.
            if (copy[i] == 0xFF && copy[i + 1] is 0xC0 or 0xC2)
            {
                BinaryPrimitives.WriteUInt16BigEndian(copy.AsSpan(i + 5), height);
                BinaryPrimitives.WriteUInt16BigEndian(copy.AsSpan(i + 7), width);
                return copy;
            }
        }

        throw new ArgumentException("no start-of-frame segment found", nameof(jpeg));
    }

    private static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }

    private static void WriteChunk(Stream stream, string type, byte[] data)
    {
        Span<byte> buffer = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(buffer, data.Length);
        stream.Write(buffer);
        var typed = Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        stream.Write(typed);
        BinaryPrimitives.WriteUInt32BigEndian(buffer, Crc32(typed));
        stream.Write(buffer);
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        var crc = 0xFFFFFFFFu;
        foreach (var b in data)
        {
            crc ^= b;
            for (var k = 0; k < 8; k++)
            {
                crc = (crc & 1) != 0 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
            }
        }

        return ~crc;
    }
}
