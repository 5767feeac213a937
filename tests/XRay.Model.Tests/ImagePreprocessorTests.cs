using SkiaSharp;

namespace XRay.Model.Tests;

public class ImagePreprocessorTests
{
    private static readonly PreprocessingSpec Spec = new();
    private readonly ImagePreprocessor _preprocessor = new(Spec);

    private float[] Decode(byte[] encoded)
    {
        var output = new float[_preprocessor.OutputLength];
        _preprocessor.Decode(encoded, output);
        return output;
    }

    private static float Normalized(float value01, int channel) => (value01 - Spec.Mean[channel]) / Spec.Std[channel];

    private static void AssertClose(float[] expected, float[] actual, float tolerance)
    {
        Assert.Equal(expected.Length, actual.Length);
        var worst = 0f;
        var at = -1;
        for (var i = 0; i < expected.Length; i++)
        {
            var d = Math.Abs(expected[i] - actual[i]);
            if (!(d <= worst))
            {
                worst = d;
                at = i;
            }
        }

        Assert.True(worst <= tolerance, $"max |difference| {worst} at index {at} exceeds {tolerance}");
    }

    [Fact]
    public void OutputLength_IsThreeTimesCropSquared()
    {
        Assert.Equal(3 * 224 * 224, _preprocessor.OutputLength);
        Assert.Equal(3 * 100 * 100, new ImagePreprocessor(new PreprocessingSpec { ResizeSize = 128, CropSize = 100 }).OutputLength);
    }

    [Fact]
    public void Decode_ValuesLieInNormalisedRangeOfEachChannel()
    {
        var output = Decode(TestImages.GrayPng(TestImages.Pattern(300, 260)));

        for (var c = 0; c < 3; c++)
        {
            var plane = output.AsSpan(c * 224 * 224, 224 * 224).ToArray();
            Assert.All(plane, v => Assert.InRange(v, Normalized(0f, c) - 1e-5f, Normalized(1f, c) + 1e-5f));
            // The pattern spans 0..255, so the output must span (almost) the whole range, not collapse.
            Assert.True(plane.Max() - plane.Min() > 0.9f * (Normalized(1f, c) - Normalized(0f, c)));
        }
    }

    [Fact]
    public void Decode_SamePictureAsGrayRgbAndRgbaPng_GivesSameTensor()
    {
        var picture = TestImages.Pattern(300, 260);
        var gray = TestImages.GrayPng(picture);
        var rgb = TestImages.RgbPng(picture);
        var rgba = TestImages.RgbaPng(picture);
        Assert.Equal(0, TestImages.PngColorType(gray));
        Assert.Equal(2, TestImages.PngColorType(rgb));
        Assert.Equal(6, TestImages.PngColorType(rgba));

        var fromGray = Decode(gray);
        AssertClose(fromGray, Decode(rgb), 1e-6f);
        AssertClose(fromGray, Decode(rgba), 1e-6f);
    }

    [Fact]
    public void Decode_NonSquareImage_ResizesShorterSideThenCropsCentre()
    {
        // 896 x 448: resized to 448 x 224, then the centre 224 columns (source columns 224..671) are kept.
        // Columns outside 112..783 are black (a plain stretch to 224 x 224 would show them at the sides), and the
        // top 56 rows are black (a crop without resizing would not reach them; after resizing they are rows 0..27).
        var picture = new byte[448, 896];
        for (var y = 0; y < 448; y++)
        {
            for (var x = 0; x < 896; x++)
            {
                picture[y, x] = y >= 56 && x is >= 112 and < 784 ? (byte)255 : (byte)0;
            }
        }

        var output = Decode(TestImages.GrayPng(picture));

        for (var c = 0; c < 3; c++)
        {
            for (var y = 0; y < 224; y++)
            {
                if (y is 27 or 28)
                {
                    continue; // the resampling filter mixes the band edge into these two rows
                }

                var expected = Normalized(y < 27 ? 0f : 1f, c);
                for (var x = 0; x < 224; x++)
                {
                    var actual = output[c * 224 * 224 + y * 224 + x];
                    Assert.True(Math.Abs(actual - expected) < 1e-5f, $"channel {c} row {y} column {x}: {actual}, expected {expected}");
                }
            }
        }
    }

    [Fact]
    public void Decode_HalvingResize_UsesPillowAntialiasedBilinearKernel()
    {
        // Pillow's bilinear filter at scale 2 is the separable kernel [1, 3, 3, 1] / 8 over source 2i-1 .. 2i+2.
        var picture = new byte[448, 448];
        var random = new Random(4);
        for (var y = 0; y < 448; y++)
        {
            for (var x = 0; x < 448; x++)
            {
                picture[y, x] = (byte)random.Next(256);
            }
        }

        var output = Decode(TestImages.GrayPng(picture));

        double[] kernel = [1 / 8.0, 3 / 8.0, 3 / 8.0, 1 / 8.0];
        foreach (var (y, x) in new[] { (1, 1), (50, 173), (222, 222), (111, 7) })
        {
            var expected = 0.0;
            for (var i = 0; i < 4; i++)
            {
                for (var j = 0; j < 4; j++)
                {
                    expected += kernel[i] * kernel[j] * picture[2 * y - 1 + i, 2 * x - 1 + j] / 255.0;
                }
            }

            var actual = output[y * 224 + x] * Spec.Std[0] + Spec.Mean[0];
            Assert.True(Math.Abs(actual - expected) < 1e-5, $"({y}, {x}): {actual} vs {expected}");
        }
    }

    [Fact]
    public void Decode_Jpeg_DecodesToTheSameValuesWithinCompressionError()
    {
        var picture = new byte[240, 320];
        for (var y = 0; y < 240; y++)
        {
            for (var x = 0; x < 320; x++)
            {
                picture[y, x] = (byte)(x < 160 ? 60 : 200);
            }
        }

        var jpeg = TestImages.Jpeg(picture);
        Assert.Equal([0xFF, 0xD8, 0xFF], jpeg[..3]);

        AssertClose(Decode(TestImages.GrayPng(picture)), Decode(jpeg), 0.1f);
    }

    [Fact]
    public void Decode_LargeJpeg_DecodedAtReducedScale_MatchesTheFullScaleDecode()
    {
        // 1024 x 800 for a 224 px resize: libjpeg's 3/8 scale (384 x 300) is the smallest that keeps 224.
        var picture = new byte[800, 1024];
        for (var y = 0; y < 800; y++)
        {
            for (var x = 0; x < 1024; x++)
            {
                // Smooth, as a radiograph is at this scale: a DCT-scaled decode differs only in how it blurs fine detail.
                picture[y, x] = (byte)(128 + 60 * Math.Sin(x / 37.0) * Math.Cos(y / 53.0) + 40 * Math.Sin((x + y) / 90.0));
            }
        }
        var jpeg = TestImages.Jpeg(picture);
        using (var codec = SKCodec.Create(new SKMemoryStream(jpeg)))
        {
            Assert.Equal(new SKSizeI(384, 300), ImagePreprocessor.ReducedJpegSize(codec, Spec.ResizeSize));
        }

        var fromPng = Decode(TestImages.GrayPng(picture));
        var fromJpeg = Decode(jpeg);

        AssertClose(fromPng, fromJpeg, 0.1f);
    }

    [Fact]
    public void ReducedJpegSize_SmallJpeg_IsNotReduced()
    {
        // 7/8 would make the shorter side 175, below the 224 px resize.
        using var codec = SKCodec.Create(new SKMemoryStream(TestImages.Jpeg(TestImages.Pattern(200, 250))));

        Assert.Equal(new SKSizeI(200, 250), ImagePreprocessor.ReducedJpegSize(codec, Spec.ResizeSize));
    }

    public static TheoryData<string, byte[]> HugeHeaders => new()
    {
        { "PNG", TestImages.WithPngSize(TestImages.GrayPng(TestImages.Pattern(64, 48)), 60000, 60000) },
        { "PNG", TestImages.WithPngSize(TestImages.Gray16Png(new ushort[48, 64]), 60000, 60000) },
        { "JPEG", TestImages.WithJpegSize(TestImages.Jpeg(TestImages.Pattern(64, 48)), 60000, 60000) },
    };

    [Theory]
    [MemberData(nameof(HugeHeaders))]
    public void Decode_HeaderOverThePixelCap_RefusedBeforeAllocatingPixels(string format, byte[] encoded)
    {
        var output = new float[_preprocessor.OutputLength];
        var allocatedBefore = GC.GetAllocatedBytesForCurrentThread();

        var error = Assert.Throws<InvalidImageException>(() => _preprocessor.Decode(encoded, output, maxPixels: 25_000_000));

        // A decode would need 60000 x 60000 x 4 bytes (14 GB); refusing from the header allocates next to nothing.
        Assert.InRange(GC.GetAllocatedBytesForCurrentThread() - allocatedBefore, 0, 64 * 1024);
        Assert.Equal($"The {format} image is 60000 x 60000 pixels; at most 25,000,000 pixels are accepted.", error.Message);
    }

    [Fact]
    public void Decode_MaxPixels_IsTheCapOfThisCall()
    {
        var png = TestImages.GrayPng(TestImages.Pattern(300, 260));
        var output = new float[_preprocessor.OutputLength];

        _preprocessor.Decode(png, output, maxPixels: 300 * 260);
        var error = Assert.Throws<InvalidImageException>(() => _preprocessor.Decode(png, output, maxPixels: 300 * 260 - 1));

        Assert.Equal("The PNG image is 300 x 260 pixels; at most 77,999 pixels are accepted.", error.Message);
    }

    [Fact]
    public void Decode_JpegWithExifOrientation_IsRotatedAsDisplayed()
    {
        // Stored: top half white, bottom half black. Orientation 6 (RightTop) is displayed rotated 90 degrees
        // clockwise, so the white half appears on the right.
        var picture = new byte[224, 224];
        for (var y = 0; y < 112; y++)
        {
            for (var x = 0; x < 224; x++)
            {
                picture[y, x] = 255;
            }
        }

        var output = Decode(TestImages.WithExifOrientation(TestImages.Jpeg(picture), orientation: 6));

        var row = output.AsSpan(100 * 224, 224);
        Assert.True(Math.Abs(row[20] - Normalized(0f, 0)) < 0.1f, $"left should be black, got {row[20]}");
        Assert.True(Math.Abs(row[200] - Normalized(1f, 0)) < 0.1f, $"right should be white, got {row[200]}");
    }

    [Fact]
    public void Decode_Gray16Png_KeepsPrecisionBeyondEightBits()
    {
        // 0x8080 + 64 is 0.50294 in [0, 1]; the nearest 8-bit level (128/255 = 0.50196) is 9.8e-4 away.
        const ushort value = 0x8080 + 64;
        var picture = new ushort[240, 240];
        for (var y = 0; y < 240; y++)
        {
            for (var x = 0; x < 240; x++)
            {
                picture[y, x] = value;
            }
        }

        var png = TestImages.Gray16Png(picture);
        Assert.Equal(16, TestImages.PngBitDepth(png));
        Assert.Equal(0, TestImages.PngColorType(png));

        var output = Decode(png);

        var expected = value / 65535f;
        for (var c = 0; c < 3; c++)
        {
            var actual = output[c * 224 * 224 + 5000] * Spec.Std[c] + Spec.Mean[c];
            Assert.True(Math.Abs(actual - expected) < 1e-5f, $"channel {c}: {actual} vs {expected}");
        }
    }

    [Fact]
    public void Decode_Gray16Png_MatchesItsEightBitTwin()
    {
        // v * 257 in 16 bits is exactly v / 255: a 16-bit image must decode like its 8-bit twin.
        var eight = TestImages.Pattern(256, 230);
        var sixteen = new ushort[230, 256];
        for (var y = 0; y < 230; y++)
        {
            for (var x = 0; x < 256; x++)
            {
                sixteen[y, x] = (ushort)(eight[y, x] * 257);
            }
        }

        AssertClose(Decode(TestImages.GrayPng(eight)), Decode(TestImages.Gray16Png(sixteen)), 1e-6f);
    }

    [Theory]
    [InlineData(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, "neither PNG nor JPEG")]
    [InlineData(new byte[] { }, "empty")]
    [InlineData(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0 }, "PNG")]
    [InlineData(new byte[] { 0xFF, 0xD8, 0xFF, 0xE0, 0, 0 }, "JPEG")]
    public void Decode_UndecodableBytes_ThrowsInvalidImageException(byte[] bytes, string messagePart)
    {
        var e = Assert.Throws<InvalidImageException>(() => Decode(bytes));
        Assert.Contains(messagePart, e.Message);
    }

    [Fact]
    public void Decode_TruncatedPng_ThrowsInvalidImageException()
    {
        var png = TestImages.GrayPng(TestImages.Pattern(400, 400));

        var e = Assert.Throws<InvalidImageException>(() => Decode(png[..(png.Length / 2)]));
        Assert.Contains("PNG", e.Message);
    }

    [Fact]
    public void Decode_TruncatedGray16Png_ThrowsInvalidImageException()
    {
        var png = TestImages.Gray16Png(new ushort[300, 300]);

        var e = Assert.Throws<InvalidImageException>(() => Decode(png[..(png.Length / 2)]));
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void Decode_Gray16PngWithCorruptData_ThrowsInvalidImageException()
    {
        var picture = new ushort[64, 64];
        for (var y = 0; y < 64; y++)
        {
            for (var x = 0; x < 64; x++)
            {
                picture[y, x] = (ushort)(x * 1000 + y);
            }
        }

        var png = TestImages.Gray16Png(picture);
        png[45] ^= 0xFF; // inside the zlib stream of the IDAT chunk

        Assert.Throws<InvalidImageException>(() => Decode(png));
    }

    [Fact]
    public void Decode_WrongDestinationLength_ThrowsArgumentException()
    {
        var png = TestImages.GrayPng(TestImages.Pattern(64, 64));
        Assert.Throws<ArgumentException>(() => _preprocessor.Decode(png, new float[10]));
    }

    [NihSampleFact]
    public void Decode_NihRgbaSample_EqualsItsGrayscaleConversion()
    {
        var rgbaBytes = File.ReadAllBytes(SharedData.NihSample!);
        Assert.Equal(6, TestImages.PngColorType(rgbaBytes)); // the file really is RGBA

        using var bitmap = SKBitmap.Decode(rgbaBytes);
        var pixels = bitmap.Pixels;
        var gray = new byte[bitmap.Height, bitmap.Width];
        for (var y = 0; y < bitmap.Height; y++)
        {
            for (var x = 0; x < bitmap.Width; x++)
            {
                var p = pixels[y * bitmap.Width + x];
                gray[y, x] = (byte)Math.Round(0.299 * p.Red + 0.587 * p.Green + 0.114 * p.Blue);
            }
        }

        AssertClose(Decode(TestImages.GrayPng(gray)), Decode(rgbaBytes), 1e-6f);
    }

    [Fact]
    public void NormalizeUInt8_OneChannel_EqualsThreeReplicatedChannels()
    {
        var plane = new byte[224 * 224];
        new Random(1).NextBytes(plane);
        var replicated = plane.Concat(plane).Concat(plane).ToArray();
        var fromOne = new float[_preprocessor.OutputLength];
        var fromThree = new float[_preprocessor.OutputLength];

        _preprocessor.NormalizeUInt8(plane, 1, fromOne);
        _preprocessor.NormalizeUInt8(replicated, 3, fromThree);

        Assert.Equal(fromThree, fromOne);
        Assert.Equal(Normalized(plane[7] / 255f, 2), fromOne[2 * 224 * 224 + 7], 6);
    }

    [Fact]
    public void NormalizeUInt8_MatchesDecodeOfTheSamePixels()
    {
        var picture = TestImages.Pattern(224, 224);
        var chw = new byte[224 * 224];
        Buffer.BlockCopy(picture, 0, chw, 0, chw.Length);
        var normalized = new float[_preprocessor.OutputLength];

        _preprocessor.NormalizeUInt8(chw, 1, normalized);

        // A 224 x 224 image needs no resize or crop, so Decode must agree to rounding.
        AssertClose(Decode(TestImages.GrayPng(picture)), normalized, 1e-5f);
    }

    [Fact]
    public void CopyFloat_OneChannelIsReplicated_ThreeChannelsCopied()
    {
        var plane = Enumerable.Range(0, 224 * 224).Select(i => i * 1e-4f).ToArray();
        var three = Enumerable.Range(0, 3 * 224 * 224).Select(i => -i * 1e-4f).ToArray();
        var output = new float[_preprocessor.OutputLength];

        _preprocessor.CopyFloat(plane, 1, output);
        Assert.Equal(plane.Concat(plane).Concat(plane).ToArray(), output);

        _preprocessor.CopyFloat(three, 3, output);
        Assert.Equal(three, output);
    }

    [Fact]
    public void RawInputs_WithWrongLengthOrChannels_AreRejected()
    {
        var output = new float[_preprocessor.OutputLength];
        Assert.Throws<ArgumentException>(() => _preprocessor.NormalizeUInt8(new byte[100], 1, output));
        Assert.Throws<ArgumentOutOfRangeException>(() => _preprocessor.NormalizeUInt8(new byte[2 * 224 * 224], 2, output));
        Assert.Throws<ArgumentException>(() => _preprocessor.CopyFloat(new float[224 * 224], 3, output));
    }

    [Theory]
    [InlineData(224, 256)]  // crop larger than resize
    [InlineData(0, 0)]
    public void Constructor_InvalidSpec_ThrowsArgumentException(int resize, int crop)
    {
        Assert.Throws<ArgumentException>(() => new ImagePreprocessor(new PreprocessingSpec { ResizeSize = resize, CropSize = crop }));
        Assert.Throws<ArgumentException>(() => new ImagePreprocessor(new PreprocessingSpec { Std = [0.2f, 0f, 0.2f] }));
        Assert.Throws<ArgumentException>(() => new ImagePreprocessor(new PreprocessingSpec { Color = "rgb" }));
    }
}
