using System.Runtime.InteropServices;
using SkiaSharp;
using XRay.Model.Imaging;

namespace XRay.Model;

/// <summary>
/// The one implementation of <see cref="PreprocessingSpec"/>, shared by server and trainer. Every method writes
/// CHW float32, <c>Channels x CropSize x CropSize</c> (3, or 1 for <see cref="PreprocessingSpec.Grayscale"/>),
/// normalised per channel as <c>(x - mean) / std</c>.
/// Thread-safe: instances hold only the immutable spec.
/// </summary>
public sealed class ImagePreprocessor
{
    /// <summary>
    /// Decoding refuses images above this many pixels unless told a smaller cap (a 16-bit 8000 x 5000 film still fits).
    /// The server passes its own, smaller cap.
    /// </summary>
    public const long MaxPixels = 40_000_000;

    private static readonly byte[] PngSignature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    private readonly int _cropSize;
    private readonly int _planeLength;
    private readonly int _channels;
    private readonly float[] _mean;
    private readonly float[] _std;

    /// <exception cref="ArgumentException">The spec is invalid.</exception>
    public ImagePreprocessor(PreprocessingSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        spec.Validate();
        Spec = spec;
        _cropSize = spec.CropSize;
        _planeLength = spec.CropSize * spec.CropSize;
        _channels = spec.Channels;
        _mean = [.. spec.Mean];
        _std = [.. spec.Std];
    }

    public PreprocessingSpec Spec { get; }

    /// <summary><c>Channels * CropSize * CropSize</c>.</summary>
    public int OutputLength => _channels * _planeLength;

    /// <summary>
    /// PNG (8 or 16 bits; grayscale, grayscale+alpha, RGB, RGBA, palette) or JPEG, any size up to
    /// <paramref name="maxPixels"/> (width x height read from the header, refused before any pixel memory is allocated):
    /// to luma (BT.601 weights; alpha ignored; 16-bit grayscale at full precision, other 16-bit PNGs reduced to 8 bits
    /// by Skia), EXIF orientation applied, shorter side resized to <c>ResizeSize</c> (antialiased bilinear; a JPEG is
    /// first decoded at the smallest DCT scale, 1/8 to 8/8, that keeps its shorter side at least <c>ResizeSize</c>,
    /// which costs far less memory and time), centre-cropped, scaled to [0, 1], replicated to three channels (unless
    /// the spec is 1-channel) and normalised. No colour management: stored values are used as they are.
    /// </summary>
    /// <exception cref="InvalidImageException">The bytes are not a decodable PNG or JPEG, or the image is too large.</exception>
    /// <returns>What the decoder saw of the image as stored (size, colour), for <see cref="RadiographCheck"/>.</returns>
    public ImageFacts Decode(ReadOnlySpan<byte> encoded, Span<float> destination, long maxPixels = MaxPixels)
    {
        CheckDestination(destination);
        var plane = destination[.._planeLength];
        var facts = DecodeToLuma(encoded, plane, maxPixels);
        NormalizeReplicated(plane, destination);
        return facts;
    }

    /// <summary>
    /// The stage of <see cref="Decode"/> before normalisation: one luma plane in [0, 1], <c>CropSize x CropSize</c>
    /// (decoded, oriented, resized, centre-cropped). Training augments this before normalising.
    /// </summary>
    /// <exception cref="InvalidImageException">The bytes are not a decodable PNG or JPEG, or the image is too large.</exception>
    public ImageFacts DecodeToLuma(ReadOnlySpan<byte> encoded, Span<float> plane, long maxPixels = MaxPixels)
    {
        if (plane.Length != _planeLength)
        {
            throw new ArgumentException($"The luma plane holds {plane.Length} values; CropSize x CropSize is {_planeLength}.", nameof(plane));
        }
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPixels, 1);
        var (gray, width, height, facts) = DecodeLuma(encoded, Math.Min(maxPixels, MaxPixels), Spec.ResizeSize);
        try
        {
            Resampler.ResizeShorterSideAndCenterCrop(
                gray.AsSpan(0, width * height), width, height, Spec.ResizeSize, _cropSize, plane);
            return facts;
        }
        finally
        {
            PixelBuffers.Return(gray);
        }
    }

    /// <summary>
    /// A uint8 image already <c>CropSize x CropSize</c>, CHW with 1 channel (replicated) or 3: to [0, 1], normalised.
    /// For a 1-channel spec, 3 channels become luma (BT.601 weights), as decoded colour images do.
    /// </summary>
    public void NormalizeUInt8(ReadOnlySpan<byte> chw, int channels, Span<float> destination)
    {
        CheckInput(chw.Length, channels, destination);
        if (_channels == 1 && channels == 3)
        {
            var r = chw[.._planeLength];
            var g = chw.Slice(_planeLength, _planeLength);
            var b = chw.Slice(2 * _planeLength, _planeLength);
            float mean0 = _mean[0], std0 = _std[0];
            for (var i = 0; i < _planeLength; i++)
            {
                destination[i] = (Luma(r[i], g[i], b[i]) - mean0) / std0;
            }

            return;
        }

        for (var c = 0; c < _channels; c++)
        {
            var source = chw.Slice(channels == 1 ? 0 : c * _planeLength, _planeLength);
            var target = destination.Slice(c * _planeLength, _planeLength);
            float mean = _mean[c], std = _std[c];
            for (var i = 0; i < source.Length; i++)
            {
                target[i] = (source[i] / 255f - mean) / std;
            }
        }
    }

    /// <summary>
    /// Float32 CHW already normalised, 1 channel (replicated) or 3: copied as is. A 1-channel spec takes only 1 channel:
    /// normalised values of 3 channels cannot be turned into its one.
    /// </summary>
    public void CopyFloat(ReadOnlySpan<float> chw, int channels, Span<float> destination)
    {
        CheckInput(chw.Length, channels, destination);
        if (channels == _channels)
        {
            chw.CopyTo(destination);
            return;
        }

        if (_channels == 1)
        {
            throw new ArgumentException("This model takes 1-channel (gray) float32 input; 3 normalised channels cannot be reduced to it.", nameof(channels));
        }

        for (var c = 0; c < 3; c++)
        {
            chw.CopyTo(destination.Slice(c * _planeLength, _planeLength));
        }
    }

    /// <summary>Writes channel c of <paramref name="destination"/> as <c>(plane - mean[c]) / std[c]</c>; plane may alias channel 0.</summary>
    private void NormalizeReplicated(ReadOnlySpan<float> plane, Span<float> destination)
    {
        // Channels 2 and 1 first: channel 0 is the plane itself and is overwritten last.
        for (var c = _channels - 1; c >= 0; c--)
        {
            var target = destination.Slice(c * _planeLength, _planeLength);
            float mean = _mean[c], std = _std[c];
            for (var i = 0; i < plane.Length; i++)
            {
                target[i] = (plane[i] - mean) / std;
            }
        }
    }

    private void CheckDestination(Span<float> destination)
    {
        if (destination.Length != OutputLength)
        {
            throw new ArgumentException(
                $"Destination holds {destination.Length} floats; expected {_channels} x {_cropSize} x {_cropSize} = {OutputLength}.",
                nameof(destination));
        }
    }

    private void CheckInput(int length, int channels, Span<float> destination)
    {
        CheckDestination(destination);
        if (channels is not (1 or 3))
        {
            throw new ArgumentOutOfRangeException(nameof(channels), channels, "Channels must be 1 (replicated) or 3.");
        }

        if (length != channels * _planeLength)
        {
            throw new ArgumentException(
                $"Input holds {length} values; expected {channels} x {_cropSize} x {_cropSize} = {channels * _planeLength}.",
                "chw");
        }
    }

    /// <summary>Decodes to a luma plane in [0, 1], oriented for display. The array is rented: return it to the pool.</summary>
    private static (float[] Gray, int Width, int Height, ImageFacts Facts) DecodeLuma(ReadOnlySpan<byte> encoded, long maxPixels, int resizeSize)
    {
        if (encoded.IsEmpty)
        {
            throw new InvalidImageException("The image is empty (0 bytes).");
        }

        var isPng = encoded.StartsWith(PngSignature);
        var isJpeg = encoded.Length >= 3 && encoded[0] == 0xFF && encoded[1] == 0xD8 && encoded[2] == 0xFF;
        if (!isPng && !isJpeg)
        {
            var head = Convert.ToHexString(encoded[..Math.Min(8, encoded.Length)]);
            throw new InvalidImageException(
                $"The image is neither PNG nor JPEG (first bytes 0x{head}, {encoded.Length} bytes in all).");
        }

        if (isPng && Gray16PngDecoder.Handles(encoded))
        {
            float[]? rented = null;
            try
            {
                var (w, h) = Gray16PngDecoder.Decode(encoded, maxPixels, n => rented = PixelBuffers.Rent<float>(n));
                return (rented!, w, h, new ImageFacts(w, h, 0));
            }
            catch
            {
                if (rented is not null)
                {
                    PixelBuffers.Return(rented);
                }

                throw;
            }
        }

        var format = isPng ? "PNG" : "JPEG";
        using var data = SKData.CreateCopy(encoded);
        using var stream = new SKMemoryStream(data);
        using var codec = SKCodec.Create(stream, out var createResult)
            ?? throw new InvalidImageException($"The {format} header could not be read ({createResult}, {encoded.Length} bytes).");

        var info = codec.Info;
        if (info.Width <= 0 || info.Height <= 0 || (long)info.Width * info.Height > maxPixels)
        {
            throw new InvalidImageException(
                $"The {format} image is {info.Width} x {info.Height} pixels; at most {maxPixels:N0} pixels are accepted.");
        }

        // Skia decodes other 16-bit PNGs (RGB, RGBA, interlaced) to 8 bits per channel.
        var colorType = info.ColorType == SKColorType.Gray8 ? SKColorType.Gray8 : SKColorType.Rgba8888;
        var size = isJpeg ? ReducedJpegSize(codec, resizeSize) : info.Size;
        var decodeInfo = new SKImageInfo(size.Width, size.Height, colorType, SKAlphaType.Unpremul);

        var width = size.Width;
        var height = size.Height;
        var rowBytes = decodeInfo.RowBytes;
        var pixels = PixelBuffers.Rent<byte>(checked(rowBytes * height));
        try
        {
            var handle = GCHandle.Alloc(pixels, GCHandleType.Pinned);
            SKCodecResult result;
            try
            {
                result = codec.GetPixels(decodeInfo, handle.AddrOfPinnedObject(), rowBytes, new SKCodecOptions());
            }
            finally
            {
                handle.Free();
            }

            if (result != SKCodecResult.Success)
            {
                var why = result == SKCodecResult.IncompleteInput ? "truncated" : "corrupt";
                throw new InvalidImageException($"The {format} image ({width} x {height}) is {why}: decoding ended with {result}.");
            }

            var gray = PixelBuffers.Rent<float>(width * height);
            long colourful = 0;
            for (var y = 0; y < height; y++)
            {
                colourful += LumaRow(pixels.AsSpan(y * rowBytes, rowBytes), colorType, gray.AsSpan(y * width, width));
            }

            var oriented = Orient(gray, width, height, codec.EncodedOrigin);
            var facts = new ImageFacts(info.Width, info.Height, (double)colourful / ((long)width * height));
            return (oriented.Gray, oriented.Width, oriented.Height, facts);
        }
        finally
        {
            PixelBuffers.Return(pixels);
        }
    }

    /// <summary>
    /// The smallest size libjpeg's DCT scaling (M/8, M = 1..8) decodes the JPEG to whose shorter side is still at least
    /// <paramref name="resizeSize"/>: a 4300 x 3500 film for a 256 px target decodes at 1/8 (538 x 438), 64x fewer pixels,
    /// with each output pixel the mean of its block, which is the antialiasing the resize needs anyway.
    /// </summary>
    internal static SKSizeI ReducedJpegSize(SKCodec codec, int resizeSize)
    {
        for (var m = 1; m < 8; m++)
        {
            var scaled = codec.GetScaledDimensions(m / 8f);
            if (Math.Min(scaled.Width, scaled.Height) >= resizeSize)
            {
                return scaled;
            }
        }

        return codec.Info.Size;
    }

    /// <summary>
    /// BT.601 luma in [0, 1] (299, 587, 114 per mille), the weights of Pillow's RGB to L. Integer weights keep 1000 * v
    /// exact, so R = G = B = v gives exactly v / 255.
    /// </summary>
    private static float Luma(byte r, byte g, byte b) => (299f * r + 587f * g + 114f * b) / 255000f;

    /// <summary>One row to luma; returns how many of its pixels are coloured (channels apart by more than <see cref="RadiographCheck.ChannelTolerance"/>).</summary>
    private static int LumaRow(ReadOnlySpan<byte> row, SKColorType colorType, Span<float> target)
    {
        var colourful = 0;
        switch (colorType)
        {
            case SKColorType.Gray8:
                for (var x = 0; x < target.Length; x++)
                {
                    target[x] = row[x] / 255f;
                }

                break;
            case SKColorType.Rgba8888:
                for (var x = 0; x < target.Length; x++)
                {
                    var p = row.Slice(x * 4, 3);
                    byte r = p[0], g = p[1], b = p[2];
                    target[x] = Luma(r, g, b);
                    var spread = Math.Max(r, Math.Max(g, b)) - Math.Min(r, Math.Min(g, b));
                    colourful += spread > RadiographCheck.ChannelTolerance ? 1 : 0;
                }

                break;
            default:
                throw new InvalidOperationException($"Unexpected decode colour type {colorType}.");
        }

        return colourful;
    }

    /// <summary>Applies EXIF orientation (JPEG from cameras and phones), so the network sees the image as displayed.</summary>
    private static (float[] Gray, int Width, int Height) Orient(float[] stored, int width, int height, SKEncodedOrigin origin)
    {
        if (origin is SKEncodedOrigin.TopLeft or (SKEncodedOrigin)0)
        {
            return (stored, width, height);
        }

        var transposed = origin is SKEncodedOrigin.LeftTop or SKEncodedOrigin.RightTop
            or SKEncodedOrigin.RightBottom or SKEncodedOrigin.LeftBottom;
        var (outWidth, outHeight) = transposed ? (height, width) : (width, height);
        var oriented = PixelBuffers.Rent<float>(width * height);
        for (var y = 0; y < outHeight; y++)
        {
            for (var x = 0; x < outWidth; x++)
            {
                // (sx, sy): the stored pixel shown at display position (x, y).
                var (sx, sy) = origin switch
                {
                    SKEncodedOrigin.TopRight => (width - 1 - x, y),
                    SKEncodedOrigin.BottomRight => (width - 1 - x, height - 1 - y),
                    SKEncodedOrigin.BottomLeft => (x, height - 1 - y),
                    SKEncodedOrigin.LeftTop => (y, x),
                    SKEncodedOrigin.RightTop => (y, height - 1 - x),
                    SKEncodedOrigin.RightBottom => (width - 1 - y, height - 1 - x),
                    SKEncodedOrigin.LeftBottom => (width - 1 - y, x),
                    _ => (x, y),
                };
                oriented[y * outWidth + x] = stored[sy * width + sx];
            }
        }

        PixelBuffers.Return(stored);
        return (oriented, outWidth, outHeight);
    }
}
