using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
using XRay.Model.Evaluation;
using static TorchSharp.torch;

namespace XRay.Model.Training;

/// <summary>Reported after each optimiser step.</summary>
/// <param name="Loss">Mean training loss of the epoch so far.</param>
/// <param name="ImagesPerSecond">Training images per second over the epoch so far.</param>
public sealed record StepProgress(int Epoch, int Epochs, int Step, int StepsPerEpoch, double Loss, double ImagesPerSecond, double LearningRate);

/// <summary>Reported after each epoch. Epochs count from 1. Validation values are NaN without a validation set.</summary>
public sealed record EpochSummary(
    int Epoch,
    double TrainLoss,
    double ImagesPerSecond,
    double Seconds,
    double ValidationMeanAuroc,
    IReadOnlyList<double> ValidationAuroc);

/// <summary>The network after the last epoch, with its manifest, and the run's history. Owns <see cref="Model"/>.</summary>
public sealed class TrainingResult(LoadedModel model, IReadOnlyList<EpochSummary> history, int bestEpoch) : IDisposable
{
    /// <summary>The final network (end of the fixed schedule), in eval mode.</summary>
    public LoadedModel Model { get; } = model;

    public IReadOnlyList<EpochSummary> History { get; } = history;

    /// <summary>Epoch with the highest validation mean AUROC; 0 without validation.</summary>
    public int BestEpoch { get; } = bestEpoch;

    public void Dispose() => Model.Dispose();
}

/// <summary>
/// Trains a multi-label network on an <see cref="ImageSet"/>: AdamW, a per-step warm-up + cosine schedule, masked
/// BCE-with-logits, radiograph augmentation, all seeded. After each epoch it reports training loss and validation
/// per-class and mean AUROC, and, given an output folder, writes
/// <c>model/</c> (the checkpoint of the epoch just finished: at the end, the fixed schedule's final weights),
/// <c>best/</c> (the epoch with the best validation mean AUROC so far) and <c>resume/</c> (weights, optimiser state
/// and history), from which <see cref="Train"/> continues after an interruption with the same result.
/// </summary>
/// <remarks>
/// On small data the validation AUROC is noisy from epoch to epoch, and picking the best epoch by it overfits the
/// validation set: prefer <c>model/</c> (fixed schedule), and judge it on a held-out test split.
/// Training runs on the calling thread, with grad mode enabled on it (grad mode is per thread in libtorch).
/// </remarks>
public sealed class Trainer
{
    public const string ModelFolder = "model";
    public const string BestFolder = "best";
    public const string ResumeFolder = "resume";
    private const string StateFile = "state.json";
    private const string OptimizerFile = "optimizer.bin";

    /// <summary>Manifest JSON conventions plus enums as kebab-case strings and NaN allowed (undefined AUROC).</summary>
    public static JsonSerializerOptions JsonOptions { get; } = new(ModelManifest.JsonOptions)
    {
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.KebabCaseLower) },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    private readonly TrainingOptions _options;

    public Trainer(TrainingOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
    }

    /// <summary>Called after each optimiser step, on the training thread.</summary>
    public Action<StepProgress>? OnStep { get; init; }

    /// <summary>Called after each epoch (and its validation), on the training thread.</summary>
    public Action<EpochSummary>? OnEpoch { get; init; }

    /// <summary>
    /// Trains for <see cref="TrainingOptions.Epochs"/> epochs. <paramref name="manifest"/> supplies name, version,
    /// description and preprocessing (its architecture and class names must match the options and the data); its
    /// <c>training</c> object (data description) is extended with the options and the history.
    /// </summary>
    /// <param name="resume">Continue from <c>outputDirectory/resume</c> when it exists (it must have been written with the same options and data).</param>
    /// <exception cref="OperationCanceledException">Cancelled; the last finished epoch is saved in <c>resume/</c>.</exception>
    public TrainingResult Train(
        ImageSet train,
        ImageSet? validation,
        ModelManifest manifest,
        string? outputDirectory = null,
        bool resume = false,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(manifest);
        CheckCompatible(train, validation, manifest);
        var batchSize = Math.Min(_options.BatchSize, train.Count);
        if (batchSize < 2)
        {
            throw new ArgumentException("Training needs at least 2 images.", nameof(train));
        }

        // The last partial batch is dropped when it has a single image (batch norm needs two).
        var stepsPerEpoch = train.Count / batchSize + (train.Count % batchSize >= 2 ? 1 : 0);
        var totalSteps = stepsPerEpoch * _options.Epochs;
        var warmupSteps = (int)Math.Round(_options.WarmupEpochs * stepsPerEpoch);
        var fingerprint = Fingerprint(train, validation);

        using var enableGrad = enable_grad();
        using var generator = new Generator((ulong)_options.Seed);
        var network = _options.InitialWeights is null
            ? Architectures.Create(_options.Architecture, train.NumClasses, generator)
            : InitialWeights.Create(_options.InitialWeights, _options.Architecture, train.ClassNames, generator);
        try
        {
            // Two parameter groups: the head (group 0) at the scheduled rate, the rest (group 1) at a fraction of it.
            var head = Architectures.HeadPrefix(_options.Architecture);
            var named = network.named_parameters().ToList();
            var headParameters = named.Where(p => p.name.StartsWith(head, StringComparison.Ordinal)).Select(p => p.parameter).ToList();
            var backboneParameters = named.Where(p => !p.name.StartsWith(head, StringComparison.Ordinal)).Select(p => p.parameter).ToList();
            var optimizer = optim.AdamW(
                [new AdamW.ParamGroup(headParameters), new AdamW.ParamGroup(backboneParameters)],
                lr: _options.LearningRate, weight_decay: _options.WeightDecay);
            var history = new List<EpochSummary>();
            var firstEpoch = 1;
            var resumeDirectory = outputDirectory is null ? null : Path.Combine(outputDirectory, ResumeFolder);
            if (resume)
            {
                if (resumeDirectory is null || !File.Exists(Path.Combine(resumeDirectory, StateFile)))
                {
                    throw new FileNotFoundException(
                        $"Nothing to resume: {Path.Combine(resumeDirectory ?? "(no output folder)", StateFile)} does not exist.");
                }

                var state = LoadState(resumeDirectory, fingerprint, network, optimizer);
                history.AddRange(state.History);
                firstEpoch = state.CompletedEpochs + 1;
            }

            using var posWeight = _options.PosWeight == PosWeightMode.Balanced
                ? tensor(MaskedBceLoss.BalancedPosWeight(train))
                : null;
            using var normalizer = new Normalizer(manifest.Preprocessing);
            for (var epoch = firstEpoch; epoch <= _options.Epochs; epoch++)
            {
                var frozen = epoch <= _options.FrozenEpochs;
                foreach (var parameter in backboneParameters)
                {
                    parameter.requires_grad = !frozen;
                }

                var summary = RunEpoch(epoch, network, optimizer, train, validation, normalizer, posWeight,
                    batchSize, stepsPerEpoch, totalSteps, warmupSteps, frozen, cancellationToken);
                history.Add(summary);
                if (outputDirectory is not null)
                {
                    SaveEpoch(outputDirectory, manifest, network, optimizer, history, fingerprint, train.Count, validation?.Count ?? 0);
                }

                OnEpoch?.Invoke(summary);
            }

            foreach (var parameter in backboneParameters)
            {
                parameter.requires_grad = true;
            }

            network.eval();
            var final = WithTraining(manifest, history, train.Count, validation?.Count ?? 0, "final epoch of the fixed schedule");
            return new TrainingResult(new LoadedModel(final, network), history, BestEpoch(history));
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>Sigmoid probabilities, row-major <c>N x C</c>, on the calling thread under no_grad; restores the network's mode.</summary>
    public static float[] PredictProbabilities(nn.Module<Tensor, Tensor> network, ImageSet set, Normalizer normalizer, int batchSize = 64) =>
        Predict(network, set, normalizer, batchSize, sigmoid);

    /// <summary>Raw logits, row-major <c>N x C</c>, as <see cref="PredictProbabilities"/>.</summary>
    public static float[] PredictLogits(nn.Module<Tensor, Tensor> network, ImageSet set, Normalizer normalizer, int batchSize = 64) =>
        Predict(network, set, normalizer, batchSize, x => x);

    private static float[] Predict(nn.Module<Tensor, Tensor> network, ImageSet set, Normalizer normalizer, int batchSize, Func<Tensor, Tensor> map)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(set);
        ArgumentNullException.ThrowIfNull(normalizer);
        var wasTraining = network.training;
        network.eval();
        try
        {
            using var noGrad = no_grad();
            var result = new float[set.Count * set.NumClasses];
            for (var start = 0; start < set.Count; start += batchSize)
            {
                using var scope = NewDisposeScope();
                var n = Math.Min(batchSize, set.Count - start);
                var probabilities = map(network.call(normalizer.Apply(set.Planes.narrow(0, start, n)))).contiguous();
                MemoryMarshal.Cast<byte, float>(probabilities.bytes).CopyTo(result.AsSpan(start * set.NumClasses));
            }

            return result;
        }
        finally
        {
            if (wasTraining)
            {
                network.train();
            }
        }
    }

    /// <summary>AUROC per class of row-major probabilities against the set's labels (NaN where undefined).</summary>
    public static double[] PerClassAuroc(ImageSet set, float[] probabilities) =>
        Enumerable.Range(0, set.NumClasses).Select(c =>
            ClassificationMetrics.Auroc(
                Enumerable.Range(0, set.Count).Select(i => probabilities[i * set.NumClasses + c]).ToArray(),
                set.ClassLabels(c))).ToArray();

    /// <summary>Mean over the classes whose AUROC is defined; NaN when none is.</summary>
    public static double MeanDefined(IEnumerable<double> values)
    {
        var defined = values.Where(v => !double.IsNaN(v)).ToArray();
        return defined.Length == 0 ? double.NaN : defined.Average();
    }

    private EpochSummary RunEpoch(
        int epoch,
        nn.Module<Tensor, Tensor> network,
        OptimizerHelper optimizer,
        ImageSet train,
        ImageSet? validation,
        Normalizer normalizer,
        Tensor? posWeight,
        int batchSize,
        int stepsPerEpoch,
        int totalSteps,
        int warmupSteps,
        bool frozen,
        CancellationToken cancellationToken)
    {
        // Frozen: the network is a fixed feature extractor (batch norm uses its stored statistics); only the head learns.
        if (frozen)
        {
            network.eval();
        }
        else
        {
            network.train();
            if (_options.FreezeBatchNormStatistics)
            {
                foreach (var module in network.modules().OfType<BatchNorm2d>())
                {
                    module.eval();
                }
            }
        }

        // One generator per epoch, from (seed, epoch) alone: a resumed run shuffles and augments exactly as an uninterrupted one.
        var random = new Random(unchecked(_options.Seed * 1_000_003 + epoch));
        var order = Enumerable.Range(0, train.Count).Select(i => (long)i).ToArray();
        random.Shuffle(order);

        var watch = Stopwatch.StartNew();
        double lossSum = 0;
        var images = 0;
        for (var step = 0; step < stepsPerEpoch; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var globalStep = (epoch - 1) * stepsPerEpoch + step;
            var learningRate = LearningRateSchedule.At(globalStep, totalSteps, warmupSteps, _options.LearningRate, _options.FinalLearningRateFraction);
            var groups = optimizer.ParamGroups.ToList();
            groups[0].LearningRate = learningRate;
            groups[1].LearningRate = frozen ? 0 : learningRate * _options.BackboneLearningRateFactor;

            var indices = order.AsSpan(step * batchSize, Math.Min(batchSize, order.Length - step * batchSize));
            float loss;
            using (var scope = NewDisposeScope())
            {
                var luma = train.Planes.index_select(0, tensor(indices.ToArray()));
                var input = normalizer.Apply(RadiographAugmentation.Apply(luma, _options.Augmentation, random));
                var (targets, mask) = train.LabelBatch(indices);
                optimizer.zero_grad();
                var output = MaskedBceLoss.Compute(network.call(input), targets, mask, posWeight);
                output.backward();
                optimizer.step();
                loss = output.item<float>();
            }

            if (!float.IsFinite(loss))
            {
                throw new InvalidOperationException(
                    $"The training loss became {loss} at epoch {epoch}, step {step + 1}; lower the learning rate (now {learningRate:G3}).");
            }

            lossSum += loss * indices.Length;
            images += indices.Length;
            OnStep?.Invoke(new StepProgress(epoch, _options.Epochs, step + 1, stepsPerEpoch, lossSum / images,
                images / watch.Elapsed.TotalSeconds, learningRate));
        }

        var trainSeconds = watch.Elapsed.TotalSeconds;
        var perClass = Array.Empty<double>();
        var mean = double.NaN;
        if (validation is not null && _options.ValidateEveryEpoch)
        {
            perClass = PerClassAuroc(validation, PredictProbabilities(network, validation, normalizer));
            mean = MeanDefined(perClass);
        }

        return new EpochSummary(epoch, lossSum / images, images / trainSeconds, watch.Elapsed.TotalSeconds, mean, perClass);
    }

    private void SaveEpoch(
        string outputDirectory,
        ModelManifest manifest,
        nn.Module<Tensor, Tensor> network,
        OptimizerHelper optimizer,
        List<EpochSummary> history,
        string fingerprint,
        int trainCount,
        int validationCount)
    {
        var current = history[^1];
        var wasTraining = network.training;
        network.eval();
        Checkpoint.Save(
            Path.Combine(outputDirectory, ModelFolder),
            WithTraining(manifest, history, trainCount, validationCount,
                current.Epoch == _options.Epochs ? "final epoch of the fixed schedule" : $"epoch {current.Epoch} of {_options.Epochs} (training not finished)"),
            network);
        if (BestEpoch(history) == current.Epoch)
        {
            Checkpoint.Save(
                Path.Combine(outputDirectory, BestFolder),
                WithTraining(manifest, history, trainCount, validationCount, $"best validation mean AUROC so far (epoch {current.Epoch})"),
                network);
        }

        var resume = Path.Combine(outputDirectory, ResumeFolder);
        Directory.CreateDirectory(resume);
        network.save(Path.Combine(resume, Checkpoint.WeightsFileName + ".tmp"));
        optimizer.save_state_dict(Path.Combine(resume, OptimizerFile + ".tmp"));
        var state = new ResumeState(fingerprint, current.Epoch, history);
        File.WriteAllText(Path.Combine(resume, StateFile + ".tmp"), JsonSerializer.Serialize(state, JsonOptions));
        // The state file moves last: it names the epoch the two other files belong to.
        File.Move(Path.Combine(resume, Checkpoint.WeightsFileName + ".tmp"), Path.Combine(resume, Checkpoint.WeightsFileName), overwrite: true);
        File.Move(Path.Combine(resume, OptimizerFile + ".tmp"), Path.Combine(resume, OptimizerFile), overwrite: true);
        File.Move(Path.Combine(resume, StateFile + ".tmp"), Path.Combine(resume, StateFile), overwrite: true);
        if (wasTraining)
        {
            network.train();
        }
    }

    private static ResumeState LoadState(string directory, string fingerprint, nn.Module network, OptimizerHelper optimizer)
    {
        var state = JsonSerializer.Deserialize<ResumeState>(File.ReadAllText(Path.Combine(directory, StateFile)), JsonOptions)
            ?? throw new InvalidDataException($"{Path.Combine(directory, StateFile)} is JSON null.");
        if (state.Fingerprint != fingerprint)
        {
            throw new InvalidOperationException(
                $"Cannot resume from {directory}: it was written by a run with other options or data.\n" +
                $"  saved: {state.Fingerprint}\n  now:   {fingerprint}");
        }

        network.load(Path.Combine(directory, Checkpoint.WeightsFileName), strict: true);
        optimizer.load_state_dict(Path.Combine(directory, OptimizerFile));
        return state;
    }

    private string Fingerprint(ImageSet train, ImageSet? validation) =>
        JsonSerializer.Serialize(new
        {
            options = _options,
            classes = train.ClassNames,
            trainImages = train.Count,
            validationImages = validation?.Count ?? 0,
            imageSize = train.Planes.shape[^1],
        }, JsonOptions).ReplaceLineEndings(" ");

    private ModelManifest WithTraining(ModelManifest manifest, List<EpochSummary> history, int trainCount, int validationCount, string selected)
    {
        var training = manifest.Training?.DeepClone().AsObject() ?? new JsonObject();
        training["options"] = JsonSerializer.SerializeToNode(_options, JsonOptions);
        training["trainImages"] = trainCount;
        training["validationImages"] = validationCount;
        training["torchThreads"] = get_num_threads();
        training["checkpoint"] = selected;
        var epochs = new JsonArray();
        foreach (var e in history)
        {
            var perClass = new JsonObject();
            for (var c = 0; c < e.ValidationAuroc.Count; c++)
            {
                perClass[manifest.ClassNames[c]] = Round(e.ValidationAuroc[c]);
            }

            epochs.Add(new JsonObject
            {
                ["epoch"] = e.Epoch,
                ["trainLoss"] = Round(e.TrainLoss),
                ["validationMeanAuroc"] = Round(e.ValidationMeanAuroc),
                ["validationAuroc"] = perClass,
                ["imagesPerSecond"] = Math.Round(e.ImagesPerSecond, 1),
            });
        }

        training["history"] = epochs;
        return manifest with { Architecture = _options.Architecture, Training = training };
    }

    private static JsonNode? Round(double value) => double.IsNaN(value) ? null : JsonValue.Create(Math.Round(value, 4));

    private static int BestEpoch(IReadOnlyList<EpochSummary> history)
    {
        var best = 0;
        var bestValue = double.NegativeInfinity;
        foreach (var e in history)
        {
            if (!double.IsNaN(e.ValidationMeanAuroc) && e.ValidationMeanAuroc > bestValue)
            {
                bestValue = e.ValidationMeanAuroc;
                best = e.Epoch;
            }
        }

        return best;
    }

    private void CheckCompatible(ImageSet train, ImageSet? validation, ModelManifest manifest)
    {
        if (!manifest.ClassNames.SequenceEqual(train.ClassNames))
        {
            throw new ArgumentException(
                $"The manifest's classes ({string.Join(", ", manifest.ClassNames)}) differ from the data's ({string.Join(", ", train.ClassNames)}).",
                nameof(manifest));
        }

        if (manifest.Architecture != _options.Architecture)
        {
            throw new ArgumentException(
                $"The manifest names architecture '{manifest.Architecture}' but the options '{_options.Architecture}'.", nameof(manifest));
        }

        if (train.Planes.shape[^1] != manifest.Preprocessing.CropSize)
        {
            throw new ArgumentException(
                $"The images are {train.Planes.shape[^1]} px but the manifest's crop size is {manifest.Preprocessing.CropSize}.", nameof(train));
        }

        if (validation is not null && !validation.ClassNames.SequenceEqual(train.ClassNames))
        {
            throw new ArgumentException("Validation and training data have different classes.", nameof(validation));
        }
    }

    private sealed record ResumeState(string Fingerprint, int CompletedEpochs, List<EpochSummary> History);
}
