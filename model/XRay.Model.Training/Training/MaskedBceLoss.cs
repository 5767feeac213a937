using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace XRay.Model.Training;

/// <summary>
/// Multi-label loss: <c>BCEWithLogitsLoss</c> per (image, class), with an optional <c>pos_weight</c> per class and a
/// mask that leaves ignored labels out; the mean is over counted labels only, so a batch with many ignored labels
/// is not down-weighted. Soft targets in [0, 1] are used as they are.
/// </summary>
public static class MaskedBceLoss
{
    /// <param name="logits"><c>[B, C]</c> raw network outputs.</param>
    /// <param name="targets"><c>[B, C]</c> in [0, 1] (any value where the mask is 0).</param>
    /// <param name="mask"><c>[B, C]</c>: 1 counted, 0 ignored.</param>
    /// <param name="posWeight"><c>[C]</c> weight of the positive term per class, or null for 1.</param>
    /// <returns>A scalar; 0 when nothing is counted.</returns>
    public static Tensor Compute(Tensor logits, Tensor targets, Tensor mask, Tensor? posWeight = null)
    {
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(mask);
        using var scope = NewDisposeScope();
        var perLabel = binary_cross_entropy_with_logits(logits, targets, weight: mask, reduction: TorchSharp.torch.nn.Reduction.None, pos_weights: posWeight);
        return (perLabel.sum() / mask.sum().clamp_min(1)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>negatives / positives</c> per class over counted labels (soft labels count fractionally), capped at
    /// <paramref name="max"/>; 1 for a class without positives or negatives. The usual weighting for rare findings
    /// (CheXNet weighted its loss by class frequency in the same spirit).
    /// </summary>
    public static float[] BalancedPosWeight(ImageSet set, float max = 100f)
    {
        ArgumentNullException.ThrowIfNull(set);
        var weights = new float[set.NumClasses];
        for (var c = 0; c < weights.Length; c++)
        {
            double positives = 0, counted = 0;
            foreach (var label in set.ClassLabels(c))
            {
                if (!float.IsNaN(label))
                {
                    positives += label;
                    counted++;
                }
            }

            var negatives = counted - positives;
            weights[c] = positives > 0 && negatives > 0 ? (float)Math.Min(max, negatives / positives) : 1f;
        }

        return weights;
    }
}
