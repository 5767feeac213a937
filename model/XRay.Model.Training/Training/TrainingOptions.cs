namespace XRay.Model.Training;

/// <summary>How <c>pos_weight</c> of the loss is set.</summary>
public enum PosWeightMode
{
    /// <summary>1 for every class.</summary>
    None,

    /// <summary><see cref="MaskedBceLoss.BalancedPosWeight"/>: negatives / positives of the training set, capped at 100.</summary>
    Balanced,
}

/// <summary>
/// A training run: network, fixed schedule (AdamW, linear warm-up then cosine decay per step), seed, loss and
/// augmentation. The same options, data and seed give the same weights (CPU, same thread count).
/// </summary>
public sealed record TrainingOptions
{
    /// <summary>One of <see cref="Architectures.Names"/>. Default <c>small_cnn</c>.</summary>
    public string Architecture { get; init; } = Architectures.SmallCnn;

    /// <summary>Passes over the training set. Default 30.</summary>
    public int Epochs { get; init; } = 30;

    /// <summary>Images per step. Default 32.</summary>
    public int BatchSize { get; init; } = 32;

    /// <summary>Peak learning rate of AdamW. Default 1e-3.</summary>
    public double LearningRate { get; init; } = 1e-3;

    /// <summary>AdamW's decoupled weight decay (Loshchilov and Hutter, 2019). Default 1e-2.</summary>
    public double WeightDecay { get; init; } = 1e-2;

    /// <summary>Epochs of linear warm-up from 0 to <see cref="LearningRate"/>. Default 1.</summary>
    public double WarmupEpochs { get; init; } = 1;

    /// <summary>The cosine decay ends at this fraction of <see cref="LearningRate"/>. Default 0.01.</summary>
    public double FinalLearningRateFraction { get; init; } = 0.01;

    /// <summary>Seeds the initial weights, the shuffling and the augmentation. Default 1.</summary>
    public int Seed { get; init; } = 1;

    public PosWeightMode PosWeight { get; init; } = PosWeightMode.None;

    public AugmentationOptions Augmentation { get; init; } = new();

    /// <summary>
    /// Start from these weights instead of a random initialisation (see <see cref="InitialWeights"/>): a checkpoint folder
    /// of the same architecture, or, for <c>resnet18_cntk</c> / <c>resnet18_cntk_gray</c>, CNTK's ImageNet
    /// <c>ResNet18.onnx</c> (with <c>ResNetPreprocess.onnx</c> beside it). The classification head is drawn afresh
    /// unless the checkpoint has the same classes. Null: from scratch.
    /// </summary>
    public string? InitialWeights { get; init; }

    /// <summary>
    /// Epochs, from the first, during which only the head learns: the rest of the network is frozen (no gradients, batch
    /// norm in eval mode). All epochs frozen is a linear probe. Default 0.
    /// </summary>
    public int FrozenEpochs { get; init; }

    /// <summary>The rest of the network learns at this fraction of the head's learning rate once unfrozen. Default 1.</summary>
    public double BackboneLearningRateFactor { get; init; } = 1;

    /// <summary>
    /// Keep batch-norm running statistics as they are (layers in eval mode) in every epoch, not only frozen ones; their
    /// scale and shift still learn. For fine-tuning on small batches, whose statistics are noisier than the pretrained
    /// ones. Default false.
    /// </summary>
    public bool FreezeBatchNormStatistics { get; init; }

    /// <summary>Evaluate the validation set after every epoch (per-class AUROC). Default true.</summary>
    public bool ValidateEveryEpoch { get; init; } = true;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid option.</summary>
    public void Validate()
    {
        if (!Architectures.Names.Contains(Architecture))
        {
            throw new ArgumentException($"Unknown architecture '{Architecture}'; known: {string.Join(", ", Architectures.Names)}.");
        }

        if (Epochs < 1) throw new ArgumentException($"Epochs must be at least 1; got {Epochs}.");
        if (BatchSize < 2) throw new ArgumentException($"Batch size must be at least 2 (batch norm); got {BatchSize}.");
        if (!(LearningRate > 0)) throw new ArgumentException($"Learning rate must be > 0; got {LearningRate}.");
        if (!(WeightDecay >= 0)) throw new ArgumentException($"Weight decay must be >= 0; got {WeightDecay}.");
        if (!(WarmupEpochs >= 0)) throw new ArgumentException($"Warm-up epochs must be >= 0; got {WarmupEpochs}.");
        if (FrozenEpochs < 0 || FrozenEpochs > Epochs)
        {
            throw new ArgumentException($"Frozen epochs must be in [0, epochs ({Epochs})]; got {FrozenEpochs}.");
        }

        if (FrozenEpochs > 0 && InitialWeights is null)
        {
            throw new ArgumentException("Frozen epochs need initial weights: freezing a random network trains only a head on random features.");
        }

        if (!(BackboneLearningRateFactor >= 0))
        {
            throw new ArgumentException($"Backbone learning-rate factor must be >= 0; got {BackboneLearningRateFactor}.");
        }

        if (FinalLearningRateFraction is < 0 or > 1)
        {
            throw new ArgumentException($"Final learning-rate fraction must be in [0, 1]; got {FinalLearningRateFraction}.");
        }
    }
}

/// <summary>The learning rate at each optimiser step: linear warm-up, then half a cosine down to the final fraction.</summary>
public static class LearningRateSchedule
{
    public static double At(int step, int totalSteps, int warmupSteps, double peak, double finalFraction)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        ArgumentOutOfRangeException.ThrowIfLessThan(totalSteps, 1);
        if (step < warmupSteps)
        {
            return peak * (step + 1) / warmupSteps;
        }

        var decaySteps = Math.Max(1, totalSteps - warmupSteps - 1);
        var progress = Math.Min(1.0, (double)(step - warmupSteps) / decaySteps);
        var final = peak * finalFraction;
        return final + (peak - final) * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}
