using System.Buffers;

namespace XRay.Model.Imaging;

/// <summary>
/// Resize-then-centre-crop of a single-channel float image, computing only the cropped pixels. The filter is
/// Pillow's antialiased bilinear (a triangle whose support widens with the downscale factor), which is what
/// torchvision's <c>Resize</c> applies to PIL images, so inputs match those that PyTorch-trained CheXNet-style
/// models saw. Output size and crop offset follow torchvision (<c>int(size * long / short)</c>, and
/// <c>round((h - crop) / 2)</c> with round-half-to-even).
/// </summary>
internal static class Resampler
{
    /// <param name="source">Row-major, <paramref name="width"/> x <paramref name="height"/>.</param>
    /// <param name="destination">Row-major, <paramref name="cropSize"/> x <paramref name="cropSize"/>.</param>
    public static void ResizeShorterSideAndCenterCrop(
        ReadOnlySpan<float> source, int width, int height, int resizeSize, int cropSize, Span<float> destination)
    {
        var (resizedWidth, resizedHeight) = ResizedSize(width, height, resizeSize);
        var left = (int)Math.Round((resizedWidth - cropSize) / 2.0, MidpointRounding.ToEven);
        var top = (int)Math.Round((resizedHeight - cropSize) / 2.0, MidpointRounding.ToEven);

        var columns = Coefficients.Compute(width, resizedWidth, left, cropSize);
        var rows = Coefficients.Compute(height, resizedHeight, top, cropSize);

        // Horizontal pass over only the source rows the vertical pass reads.
        var firstRow = rows.Start[0];
        var lastRow = rows.Start[cropSize - 1] + rows.Count[cropSize - 1];
        var intermediate = ArrayPool<float>.Shared.Rent((lastRow - firstRow) * cropSize);
        try
        {
            HorizontalPass(source, width, columns, firstRow, lastRow, cropSize, intermediate);
            VerticalPass(intermediate, rows, firstRow, cropSize, destination);
        }
        finally
        {
            ArrayPool<float>.Shared.Return(intermediate);
        }
    }

    private static void HorizontalPass(
        ReadOnlySpan<float> source, int width, Coefficients columns, int firstRow, int lastRow, int cropSize, float[] intermediate)
    {
        for (var y = firstRow; y < lastRow; y++)
        {
            var sourceRow = source.Slice(y * width, width);
            var outRow = intermediate.AsSpan((y - firstRow) * cropSize, cropSize);
            for (var x = 0; x < cropSize; x++)
            {
                var start = columns.Start[x];
                var weights = columns.Weights.AsSpan(x * columns.MaxTaps, columns.Count[x]);
                var sum = 0f;
                for (var k = 0; k < weights.Length; k++)
                {
                    sum += sourceRow[start + k] * weights[k];
                }

                outRow[x] = sum;
            }
        }
    }

    private static void VerticalPass(float[] intermediate, Coefficients rows, int firstRow, int cropSize, Span<float> destination)
    {
        for (var y = 0; y < cropSize; y++)
        {
            var start = rows.Start[y] - firstRow;
            var weights = rows.Weights.AsSpan(y * rows.MaxTaps, rows.Count[y]);
            var outRow = destination.Slice(y * cropSize, cropSize);
            outRow.Clear();
            for (var k = 0; k < weights.Length; k++)
            {
                var weight = weights[k];
                var inRow = intermediate.AsSpan((start + k) * cropSize, cropSize);
                for (var x = 0; x < cropSize; x++)
                {
                    outRow[x] += inRow[x] * weight;
                }
            }
        }
    }

    /// <summary>torchvision's <c>Resize(int)</c>: shorter side to <paramref name="size"/>, longer side truncated.</summary>
    public static (int Width, int Height) ResizedSize(int width, int height, int size) =>
        width <= height
            ? (size, (int)((long)size * height / width))
            : ((int)((long)size * width / height), size);

    /// <summary>Pillow's <c>precompute_coeffs</c> for the bilinear filter, for output pixels [first, first + count).</summary>
    private sealed class Coefficients
    {
        public required int[] Start { get; init; }
        public required int[] Count { get; init; }
        public required float[] Weights { get; init; }
        public required int MaxTaps { get; init; }

        public static Coefficients Compute(int inSize, int outSize, int first, int count)
        {
            var scale = (double)inSize / outSize;
            var filterScale = Math.Max(scale, 1.0);
            var support = 1.0 * filterScale; // the triangle filter's support is 1 at scale 1
            var maxTaps = (int)Math.Ceiling(support) * 2 + 1;
            var starts = new int[count];
            var counts = new int[count];
            var weights = new float[count * maxTaps];
            var buffer = new double[maxTaps];
            for (var i = 0; i < count; i++)
            {
                var center = (first + i + 0.5) * scale;
                var xmin = Math.Max((int)(center - support + 0.5), 0);
                var xmax = Math.Min((int)(center + support + 0.5), inSize) - xmin;
                var total = 0.0;
                for (var k = 0; k < xmax; k++)
                {
                    var w = Math.Max(0.0, 1.0 - Math.Abs((k + xmin - center + 0.5) / filterScale));
                    buffer[k] = w;
                    total += w;
                }

                for (var k = 0; k < xmax; k++)
                {
                    weights[i * maxTaps + k] = (float)(total == 0 ? 0 : buffer[k] / total);
                }

                starts[i] = xmin;
                counts[i] = xmax;
            }

            return new Coefficients { Start = starts, Count = counts, Weights = weights, MaxTaps = maxTaps };
        }
    }
}
