using System.Runtime.InteropServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace XRay.Model.Training;

/// <summary>A linear head, <c>logits = features · Weightᵀ + Bias</c>: <c>Weight</c> is row-major <c>[classes, dimension]</c>.</summary>
public sealed record LinearHead(float[] Weight, float[] Bias)
{
    public int Classes => Bias.Length;

    public int Dimension => Weight.Length / Bias.Length;

    /// <summary>The mean of several heads: one head whose logits are the mean of theirs (averaging costs nothing at inference).</summary>
    public static LinearHead Average(IReadOnlyList<LinearHead> heads)
    {
        ArgumentNullException.ThrowIfNull(heads);
        if (heads.Count == 0 || heads.Any(h => h.Weight.Length != heads[0].Weight.Length || h.Bias.Length != heads[0].Bias.Length))
        {
            throw new ArgumentException("Average needs at least one head, all of the same shape.", nameof(heads));
        }

        var weight = new float[heads[0].Weight.Length];
        var bias = new float[heads[0].Bias.Length];
        foreach (var head in heads)
        {
            for (var i = 0; i < weight.Length; i++) weight[i] += head.Weight[i] / heads.Count;
            for (var i = 0; i < bias.Length; i++) bias[i] += head.Bias[i] / heads.Count;
        }

        return new LinearHead(weight, bias);
    }

    /// <summary>Row-major <c>[N, classes]</c> logits of view <paramref name="view"/> of every image.</summary>
    public float[] Logits(BackboneFeatures features, int view = 0)
    {
        ArgumentNullException.ThrowIfNull(features);
        if (features.Dimension != Dimension)
        {
            throw new ArgumentException($"The head takes {Dimension} features; these have {features.Dimension}.", nameof(features));
        }

        var logits = new float[features.Count * Classes];
        for (var i = 0; i < features.Count; i++)
        {
            var x = features.Values.AsSpan((i * features.Views + view) * Dimension, Dimension);
            for (var c = 0; c < Classes; c++)
            {
                var w = Weight.AsSpan(c * Dimension, Dimension);
                double sum = Bias[c];
                for (var d = 0; d < Dimension; d++)
                {
                    sum += (double)w[d] * x[d];
                }

                logits[i * Classes + c] = (float)sum;
            }
        }

        return logits;
    }
}

/// <summary>
/// A linear probe trained on <see cref="BackboneFeatures"/>: the same recipe as <see cref="Trainer"/> with every epoch
/// frozen (AdamW with its two learning-rate groups reduced to the head, the per-step warm-up and cosine schedule,
/// masked BCE-with-logits with the same <c>pos_weight</c>, batches of the same size with a lone last image dropped),
/// but on features computed once instead of a backbone pass per batch: epoch <c>e</c> reads view
/// <c>(e - 1) mod Views</c>. Seconds per head on a CPU, so cross-validation over folds, seeds and epoch counts is cheap.
/// </summary>
public static class LinearProbe
{
    /// <summary>True when <paramref name="options"/> describe a linear probe (every epoch frozen, pretrained weights).</summary>
    public static bool IsProbe(TrainingOptions options) =>
        options.InitialWeights is not null && options.FrozenEpochs == options.Epochs;

    /// <summary>Trains one head on <paramref name="features"/> with labels <paramref name="labels"/> (row-major <c>N x C</c>, NaN ignored).</summary>
    public static LinearHead Train(BackboneFeatures features, float[] labels, int numClasses, TrainingOptions options, int seed, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(features);
        ArgumentNullException.ThrowIfNull(labels);
        ArgumentNullException.ThrowIfNull(options);
        if (labels.Length != features.Count * numClasses)
        {
            throw new ArgumentException($"{labels.Length} labels for {features.Count} images of {numClasses} classes.", nameof(labels));
        }

        var n = features.Count;
        var batchSize = Math.Min(options.BatchSize, n);
        if (batchSize < 2)
        {
            throw new ArgumentException("Training needs at least 2 images.", nameof(features));
        }

        var stepsPerEpoch = n / batchSize + (n % batchSize >= 2 ? 1 : 0);
        var totalSteps = stepsPerEpoch * options.Epochs;
        var warmupSteps = (int)Math.Round(options.WarmupEpochs * stepsPerEpoch);
        var d = features.Dimension;

        using var enableGrad = enable_grad();
        using var scope = NewDisposeScope();
        using var generator = new Generator((ulong)seed);
        var head = nn.Linear(d, numClasses);
        // torch.nn.Linear's own initialisation, drawn from the seeded generator.
        var bound = 1.0 / Math.Sqrt(d);
        using (no_grad())
        {
            head.weight!.uniform_(-bound, bound, generator);
            head.bias!.uniform_(-bound, bound, generator);
        }

        var optimizer = optim.AdamW(head.parameters(), lr: options.LearningRate, weight_decay: options.WeightDecay);
        var all = tensor(features.Values, [n, features.Views, d]);
        var targets = tensor(labels.Select(v => float.IsNaN(v) ? 0f : v).ToArray(), [n, numClasses]);
        var mask = tensor(labels.Select(v => float.IsNaN(v) ? 0f : 1f).ToArray(), [n, numClasses]);
        var posWeight = options.PosWeight == PosWeightMode.Balanced ? tensor(BalancedPosWeight(labels, numClasses)) : null;
        for (var epoch = 1; epoch <= options.Epochs; epoch++)
        {
            var view = all.select(1, (epoch - 1) % features.Views);
            var random = new Random(unchecked(seed * 1_000_003 + epoch));
            var order = Enumerable.Range(0, n).Select(i => (long)i).ToArray();
            random.Shuffle(order);
            for (var step = 0; step < stepsPerEpoch; step++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var globalStep = (epoch - 1) * stepsPerEpoch + step;
                var learningRate = LearningRateSchedule.At(globalStep, totalSteps, warmupSteps, options.LearningRate, options.FinalLearningRateFraction);
                foreach (var group in optimizer.ParamGroups)
                {
                    group.LearningRate = learningRate;
                }

                using var stepScope = NewDisposeScope();
                var index = tensor(order.AsSpan(step * batchSize, Math.Min(batchSize, n - step * batchSize)).ToArray());
                optimizer.zero_grad();
                var loss = MaskedBceLoss.Compute(head.call(view.index_select(0, index)), targets.index_select(0, index), mask.index_select(0, index), posWeight);
                loss.backward();
                optimizer.step();
            }
        }

        using var weight = head.weight!.detach().contiguous();
        using var bias = head.bias!.detach().contiguous();
        return new LinearHead(
            MemoryMarshal.Cast<byte, float>(weight.bytes).ToArray(),
            MemoryMarshal.Cast<byte, float>(bias.bytes).ToArray());
    }

    /// <summary>
    /// The features a probe trains on and predicts from, for every image of <paramref name="set"/>: <c>Plain</c> (one
    /// view, the images as decoded: what held-out images are predicted from) and <c>Training</c> (<paramref name="views"/>
    /// augmented views when the options augment, else the plain ones). Read from <paramref name="cache"/> when it holds
    /// them; computed and saved there otherwise.
    /// </summary>
    public static (BackboneFeatures Training, BackboneFeatures Plain) Features(
        nn.Module<Tensor, Tensor> network,
        ImageSet set,
        PreprocessingSpec spec,
        TrainingOptions options,
        int views,
        FeatureCache? cache,
        Action<string>? log = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        using var normalizer = new Normalizer(spec);
        var head = Architectures.HeadPrefix(options.Architecture);
        BackboneFeatures Get(AugmentationOptions augmentation, int count)
        {
            BackboneFeatures Compute()
            {
                var watch = System.Diagnostics.Stopwatch.StartNew();
                var features = BackboneFeatures.Compute(network, set, normalizer, augmentation, count, options.Seed, cancellationToken: cancellationToken);
                log?.Invoke($"backbone features: {set.Count} images x {count} view(s){(augmentation.Enabled ? ", augmented" : "")} in {watch.Elapsed.TotalSeconds:F0} s");
                return features;
            }

            if (cache is null)
            {
                return Compute();
            }

            var key = BackboneFeatures.Key(network, head, set, spec, augmentation, count, options.Seed);
            var result = cache.GetOrCompute(key, Compute, out var hit);
            if (hit)
            {
                log?.Invoke($"backbone features: {set.Count} images x {count} view(s) from {Path.Combine(cache.Directory, key)}.features");
            }

            return result;
        }

        var plain = Get(AugmentationOptions.None, 1);
        var training = options.Augmentation.Enabled ? Get(options.Augmentation, views) : plain;
        return (training, plain);
    }

    /// <summary>One head per seed, averaged into one.</summary>
    public static LinearHead TrainAveraged(BackboneFeatures features, float[] labels, int numClasses, TrainingOptions options, IReadOnlyList<int> seeds, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(seeds);
        if (seeds.Count == 0)
        {
            throw new ArgumentException("Give at least one seed.", nameof(seeds));
        }

        return LinearHead.Average(seeds.Select(s => Train(features, labels, numClasses, options, s, cancellationToken)).ToArray());
    }

    /// <summary>Copies <paramref name="head"/> into the network's final linear layer (<c>fc.weight</c>, <c>fc.bias</c> or <c>classifier.*</c>).</summary>
    public static void SetHead(nn.Module<Tensor, Tensor> network, string architecture, LinearHead head)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(head);
        var prefix = Architectures.HeadPrefix(architecture);
        var state = network.state_dict();
        var weight = state[prefix + "weight"];
        var bias = state[prefix + "bias"];
        if (weight.shape[0] != head.Classes || weight.shape[1] != head.Dimension)
        {
            throw new ArgumentException($"The network's head is [{weight.shape[0]}, {weight.shape[1]}]; this one is [{head.Classes}, {head.Dimension}].", nameof(head));
        }

        using var noGrad = no_grad();
        using var w = tensor(head.Weight, [head.Classes, head.Dimension]);
        using var b = tensor(head.Bias);
        weight.copy_(w);
        bias.copy_(b);
    }

    /// <summary>As <see cref="MaskedBceLoss.BalancedPosWeight"/>, from row-major labels.</summary>
    internal static float[] BalancedPosWeight(float[] labels, int numClasses, float max = 100f)
    {
        var weights = new float[numClasses];
        var n = labels.Length / numClasses;
        for (var c = 0; c < numClasses; c++)
        {
            double positives = 0, counted = 0;
            for (var i = 0; i < n; i++)
            {
                var label = labels[i * numClasses + c];
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
