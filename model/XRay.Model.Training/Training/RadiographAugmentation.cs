using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace XRay.Model.Training;

/// <summary>
/// Augmentation for frontal chest radiographs: small rotations, scaling and translations (patient positioning) and
/// brightness/contrast changes (exposure). No horizontal flip by default: the heart sits on the patient's left and
/// findings such as cardiomegaly or dextrocardia depend on the side. Each value is the largest magnitude drawn;
/// each is drawn uniformly per image. Defaults are mild, as in CheXNet-style training.
/// </summary>
public sealed record AugmentationOptions
{
    /// <summary>Off: batches pass through unchanged.</summary>
    public bool Enabled { get; init; } = true;

    /// <summary>Degrees, ±. Default 7.</summary>
    public double RotationDegrees { get; init; } = 7;

    /// <summary>Relative zoom, ±: 0.08 draws scales in [0.92, 1.08]. Default 0.08.</summary>
    public double Scale { get; init; } = 0.08;

    /// <summary>Fraction of the image size, ± in x and y. Default 0.05.</summary>
    public double Translation { get; init; } = 0.05;

    /// <summary>Added to [0, 1] intensities, ±. Default 0.08.</summary>
    public double Brightness { get; init; } = 0.08;

    /// <summary>Relative contrast change about the image mean, ±. Default 0.12.</summary>
    public double Contrast { get; init; } = 0.12;

    /// <summary>Mirror left-right with probability 0.5. Default false (anatomy is not symmetric).</summary>
    public bool HorizontalFlip { get; init; }

    public static AugmentationOptions None { get; } = new() { Enabled = false };
}

/// <summary>Applies <see cref="AugmentationOptions"/> to a batch of luma planes with per-image parameters from a seeded <see cref="Random"/>.</summary>
public static class RadiographAugmentation
{
    /// <summary><paramref name="luma"/> is <c>[B, 1, H, W]</c> in [0, 1]; returns a new tensor of the same shape, in [0, 1].</summary>
    public static Tensor Apply(Tensor luma, AugmentationOptions options, Random random)
    {
        ArgumentNullException.ThrowIfNull(luma);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(random);
        if (!options.Enabled)
        {
            return luma.alias();
        }

        var batch = (int)luma.shape[0];
        var theta = new float[batch * 6];
        var gain = new float[batch];
        var offset = new float[batch];
        double U(double magnitude) => (random.NextDouble() * 2 - 1) * magnitude;
        for (var b = 0; b < batch; b++)
        {
            var angle = U(options.RotationDegrees) * Math.PI / 180;
            var scale = 1 + U(options.Scale);
            var flip = options.HorizontalFlip && random.NextDouble() < 0.5 ? -1 : 1;
            // affine_grid maps output to input coordinates in [-1, 1]: zooming in by 'scale' samples a smaller region.
            var cos = Math.Cos(angle) / scale;
            var sin = Math.Sin(angle) / scale;
            theta[b * 6 + 0] = (float)(cos * flip);
            theta[b * 6 + 1] = (float)-sin;
            theta[b * 6 + 2] = (float)(2 * U(options.Translation));
            theta[b * 6 + 3] = (float)(sin * flip);
            theta[b * 6 + 4] = (float)cos;
            theta[b * 6 + 5] = (float)(2 * U(options.Translation));
            gain[b] = (float)(1 + U(options.Contrast));
            offset[b] = (float)U(options.Brightness);
        }

        using var scope = NewDisposeScope();
        var grid = affine_grid(tensor(theta, [batch, 2, 3]), luma.shape, align_corners: false);
        // Border padding repeats the edge (film background) instead of inventing black corners.
        var moved = grid_sample(luma, grid, GridSampleMode.Bilinear, GridSamplePaddingMode.Border, align_corners: false);
        var mean = moved.mean([1, 2, 3], keepdim: true);
        var adjusted = (moved - mean) * tensor(gain, [batch, 1, 1, 1]) + mean + tensor(offset, [batch, 1, 1, 1]);
        return adjusted.clamp(0, 1).MoveToOuterDisposeScope();
    }
}
