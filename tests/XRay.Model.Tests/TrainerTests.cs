using System.Diagnostics;
using System.Text.Json.Nodes;
using XRay.Model.Training;
using Xunit.Abstractions;

namespace XRay.Model.Tests;

public class TrainerTests(ITestOutputHelper output)
{
    private static readonly PreprocessingSpec Small = new() { CropSize = 64, ResizeSize = 64 };

    /// <summary>
    /// The learning test: small_cnn on synthetic chest X-rays (64 px, no augmentation, fixed 10-epoch schedule) must
    /// reach mean AUROC >= 0.95 on 400 images it never saw. Bounded: the run is cancelled after 5 minutes.
    /// </summary>
    [Fact]
    public void Train_SmallCnnOnSyntheticData_ReachesHeldOutMeanAurocOf095()
    {
        var generator = new SyntheticChestXray(seed: 11);
        using var train = ImageSet.Synthetic(generator, first: 0, count: 1200, Small);
        using var heldOut = ImageSet.Synthetic(generator, first: 100_000, count: 400, Small);
        var options = new TrainingOptions
        {
            Epochs = 10, BatchSize = 32, LearningRate = 3e-3, Seed = 1, Augmentation = AugmentationOptions.None,
            ValidateEveryEpoch = false,
        };
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        var watch = Stopwatch.StartNew();

        using var result = new Trainer(options).Train(train, validation: null, Manifest(SyntheticChestXray.ClassNames), cancellationToken: timeout.Token);

        using var normalizer = new Normalizer(Small);
        var perClass = Trainer.PerClassAuroc(heldOut, Trainer.PredictProbabilities(result.Model.Network, heldOut, normalizer));
        var mean = perClass.Average();
        output.WriteLine($"{watch.Elapsed.TotalSeconds:F1} s; held-out AUROC {string.Join(", ", SyntheticChestXray.ClassNames.Zip(perClass, (c, a) => $"{c} {a:F3}"))}; mean {mean:F3}");
        Assert.True(mean >= 0.95, $"held-out mean AUROC {mean:F3} < 0.95");
        Assert.True(result.History[^1].TrainLoss < result.History[0].TrainLoss);
        Assert.False(result.Model.Network.training);
    }

    [Fact]
    public void Train_Resumed_GivesTheSameWeightsAsAnUninterruptedRun()
    {
        var generator = new SyntheticChestXray(seed: 4);
        using var train = ImageSet.Synthetic(generator, 0, 48, Small);
        using var validation = ImageSet.Synthetic(generator, 1000, 16, Small);
        var options = new TrainingOptions { Epochs = 3, BatchSize = 16, Seed = 9 };
        var manifest = Manifest(SyntheticChestXray.ClassNames);
        using var whole = new TempDirectory();
        using var parts = new TempDirectory();

        using var uninterrupted = new Trainer(options).Train(train, validation, manifest, whole.Path);
        using var cancel = new CancellationTokenSource();
        var interrupted = new Trainer(options) { OnEpoch = e => { if (e.Epoch == 2) cancel.Cancel(); } };
        Assert.Throws<OperationCanceledException>(() => interrupted.Train(train, validation, manifest, parts.Path, cancellationToken: cancel.Token));
        using var resumed = new Trainer(options).Train(train, validation, manifest, parts.Path, resume: true);

        var input = TestModels.Input(2, seed: 3, crop: 64);
        Assert.Equal(
            TestModels.DirectForward(uninterrupted.Model.Network, input, 2, crop: 64),
            TestModels.DirectForward(resumed.Model.Network, input, 2, crop: 64));
        Assert.Equal(uninterrupted.History.Select(h => h.TrainLoss), resumed.History.Select(h => h.TrainLoss));
    }

    [Fact]
    public void Train_WritesLoadableCheckpointsWithHistory_AndRefusesToResumeWithOtherOptions()
    {
        var generator = new SyntheticChestXray(seed: 8);
        using var train = ImageSet.Synthetic(generator, 0, 40, Small);
        using var validation = ImageSet.Synthetic(generator, 500, 20, Small);
        var options = new TrainingOptions { Epochs = 2, BatchSize = 16, PosWeight = PosWeightMode.Balanced };
        var epochs = new List<EpochSummary>();
        using var dir = new TempDirectory();

        using (var result = new Trainer(options) { OnEpoch = epochs.Add }.Train(train, validation, Manifest(SyntheticChestXray.ClassNames), dir.Path))
        {
            Assert.Equal([1, 2], epochs.Select(e => e.Epoch));
            Assert.All(epochs, e => Assert.Equal(5, e.ValidationAuroc.Count));
            Assert.All(epochs, e => Assert.InRange(e.ValidationMeanAuroc, 0.0, 1.0));
        }

        using var saved = Checkpoint.Load(Path.Combine(dir.Path, Trainer.ModelFolder));
        var history = Assert.IsType<JsonArray>(saved.Manifest.Training!["history"]);
        Assert.Equal(2, history.Count);
        Assert.Equal("final epoch of the fixed schedule", (string?)saved.Manifest.Training["checkpoint"]);
        Assert.Equal("balanced", (string?)saved.Manifest.Training["options"]!["posWeight"]);
        Assert.True(File.Exists(Path.Combine(dir.Path, Trainer.BestFolder, Checkpoint.WeightsFileName)));

        var other = options with { Epochs = 3, LearningRate = 5e-4 };
        var e = Assert.Throws<InvalidOperationException>(() => new Trainer(other).Train(train, validation, Manifest(SyntheticChestXray.ClassNames), dir.Path, resume: true));
        Assert.Contains("other options or data", e.Message);
    }

    [Fact]
    public void Train_IgnoredLabelsDoNotBreakTraining_AndValidationSkipsThem()
    {
        // A class whose every label is ignored contributes no loss and has no AUROC; the others still train.
        var generator = new SyntheticChestXray(seed: 2);
        using var full = ImageSet.Synthetic(generator, 0, 40, Small);
        var labels = full.Labels.Select((v, i) => i % 5 == 4 ? float.NaN : v).ToArray();
        using var masked = ImageSet.FromTensors(full.Planes.clone(), labels, full.ClassNames, full.Names, full.PatientIds);

        using var result = new Trainer(new TrainingOptions { Epochs = 1, BatchSize = 8 }).Train(masked, masked, Manifest(full.ClassNames));

        Assert.True(double.IsNaN(result.History[0].ValidationAuroc[4]));
        Assert.False(double.IsNaN(result.History[0].ValidationMeanAuroc));
        Assert.True(double.IsFinite(result.History[0].TrainLoss));
    }

    [Fact]
    public void FineTune_FrozenEpochs_TrainOnlyTheHead_ThenTheWholeNetwork()
    {
        var generator = new SyntheticChestXray(seed: 5);
        using var train = ImageSet.Synthetic(generator, 0, 32, Small);
        using var start = new TempDirectory();
        // The starting checkpoint: a small_cnn trained briefly, with 5 classes.
        using (var source = new Trainer(new TrainingOptions { Epochs = 1, BatchSize = 16, Seed = 2 }).Train(train, null, Manifest(train.ClassNames)))
        {
            Checkpoint.Save(start.Path, source.Model.Manifest, source.Model.Network);
        }

        // Two of the five classes: the head is new, everything else comes from the checkpoint.
        var classes = train.ClassNames.Take(2).ToArray();
        using var subset = ImageSet.FromTensors(train.Planes.clone(), train.Labels.Where((_, i) => i % 5 < 2).ToArray(), classes, train.Names, train.PatientIds);
        using var initial = Checkpoint.Load(start.Path);
        var before = State(initial.Network);
        var probe = new TrainingOptions { Epochs = 2, BatchSize = 16, InitialWeights = start.Path, FrozenEpochs = 2 };
        using (var probed = new Trainer(probe).Train(subset, null, Manifest(classes)))
        {
            var after = State(probed.Model.Network);
            foreach (var (name, value) in after.Where(kv => !kv.Key.StartsWith("classifier.", StringComparison.Ordinal)))
            {
                Assert.True(value.SequenceEqual(before[name]), $"{name} changed while frozen");
            }

            Assert.Equal([2L, 128], probed.Model.Network.state_dict()["classifier.weight"].shape);
            Assert.All(probed.Model.Network.parameters(), p => Assert.True(p.requires_grad));
        }

        // One frozen epoch, then one with everything learning: the backbone moves.
        using var tuned = new Trainer(probe with { FrozenEpochs = 1, BackboneLearningRateFactor = 0.5 }).Train(subset, null, Manifest(classes));
        var changed = State(tuned.Model.Network).Where(kv => !kv.Key.StartsWith("classifier.", StringComparison.Ordinal) && !kv.Value.SequenceEqual(before[kv.Key]));
        Assert.Contains(changed, kv => kv.Key.EndsWith(".weight", StringComparison.Ordinal));
        Assert.Contains(changed, kv => kv.Key.EndsWith(".running_mean", StringComparison.Ordinal));

        // Unfrozen with batch-norm statistics kept: weights move, running statistics do not.
        using var fixedStats = new Trainer(probe with { FrozenEpochs = 0, FreezeBatchNormStatistics = true }).Train(subset, null, Manifest(classes));
        var state = State(fixedStats.Model.Network);
        Assert.All(state.Where(kv => kv.Key.Contains(".running_", StringComparison.Ordinal)), kv => Assert.Equal(before[kv.Key], kv.Value));
        Assert.Contains(state, kv => kv.Key.StartsWith("features.conv", StringComparison.Ordinal) && !kv.Value.SequenceEqual(before[kv.Key]));
    }

    [Fact]
    public void FineTune_RefusesWeightsThatDoNotFit()
    {
        Assert.Throws<ArgumentException>(() => new TrainingOptions { Epochs = 2, FrozenEpochs = 1 }.Validate());
        Assert.Throws<ArgumentException>(() => new TrainingOptions { Epochs = 2, FrozenEpochs = 3, InitialWeights = "x" }.Validate());
        var onnx = Assert.Throws<ArgumentException>(() => InitialWeights.Create("ResNet18.onnx", Architectures.SmallCnn, ["a"], null));
        Assert.Contains("resnet18_cntk", onnx.Message);

        using var dir = new TempDirectory();
        using (var model = TestModels.Seeded(Architectures.SmallCnn, classes: 2))
        {
            Checkpoint.Save(dir.Path, model.Manifest, model.Network);
        }

        var other = Assert.Throws<ArgumentException>(() => InitialWeights.Create(dir.Path, Architectures.ResNet18, ["a"], null));
        Assert.Contains("is a small_cnn", other.Message);
    }

    private static Dictionary<string, float[]> State(TorchSharp.torch.nn.Module network) =>
        network.state_dict()
            .Where(kv => kv.Value.dtype == TorchSharp.torch.ScalarType.Float32)
            .ToDictionary(kv => kv.Key, kv => kv.Value.data<float>().ToArray());

    private static ModelManifest Manifest(IReadOnlyList<string> classes) => new()
    {
        Name = "trainer-test",
        Version = "0.0.1",
        Architecture = Architectures.SmallCnn,
        ClassNames = classes,
        Preprocessing = Small,
    };
}
