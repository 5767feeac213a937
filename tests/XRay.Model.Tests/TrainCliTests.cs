using XRay.Train;

namespace XRay.Model.Tests;

public class TrainCliTests
{
    [Fact]
    public async Task TrainThenEvaluate_WritesCheckpointReportRocPng_AndCalibratedThresholds()
    {
        using var dir = new TempDirectory();
        var run = Path.Combine(dir.Path, "run");
        var output = new StringWriter();
        var error = new StringWriter();

        var trained = await TrainApp.RunAsync(
            ["train", "--synthetic", "80", "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--out", run], output, error)
            .WaitAsync(TimeSpan.FromMinutes(3));
        Assert.True(trained == 0, error.ToString());
        Assert.Contains("epoch   2:", output.ToString());

        var model = Path.Combine(run, "model");
        var report = Path.Combine(dir.Path, "report");
        var evaluated = await TrainApp.RunAsync(
            ["evaluate", "--model", model, "--report", report, "--calibrate", "youden", "--write-thresholds", "--bootstrap", "50"], output, error)
            .WaitAsync(TimeSpan.FromMinutes(3));
        Assert.True(evaluated == 0, error.ToString());

        var markdown = await File.ReadAllTextAsync(Path.Combine(report, "report.md"));
        Assert.Contains("| Cardiomegaly |", markdown);
        Assert.Contains("AUROC [95% CI]", markdown);
        Assert.Contains("Youden", markdown);
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], (await File.ReadAllBytesAsync(Path.Combine(report, "roc.png")))[..4]);
        Assert.True(File.Exists(Path.Combine(report, "metrics.json")));

        using var calibrated = Checkpoint.Load(model);
        Assert.Equal(5, calibrated.Manifest.Thresholds!.Count);
        Assert.NotNull(calibrated.Manifest.Training!["calibration"]);
        Assert.Contains("not for clinical use", calibrated.Manifest.Description, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task ImportOnnx_ThenTrainFromImageNet_WritesAFineTunedGrayCheckpoint()
    {
        using var dir = new TempDirectory();
        var imported = Path.Combine(dir.Path, "imported");
        var run = Path.Combine(dir.Path, "run");
        var output = new StringWriter();
        var error = new StringWriter();

        var code = await TrainApp.RunAsync(["import-onnx", "--gray", "--classes", "a,b", "--out", imported], output, error).WaitAsync(TimeSpan.FromMinutes(3));
        Assert.True(code == 0, error.ToString());
        using (var checkpoint = Checkpoint.Load(imported))
        {
            Assert.Equal(Architectures.ResNet18CntkGray, checkpoint.Manifest.Architecture);
            Assert.Equal(1, checkpoint.Manifest.Preprocessing.Channels);
        }

        code = await TrainApp.RunAsync(
            ["train", "--synthetic", "24", "--arch", "resnet18_cntk_gray", "--init", "imagenet", "--epochs", "2", "--frozen-epochs", "2",
             "--batch-size", "8", "--seeds", "2", "--views", "2", "--feature-cache", Path.Combine(dir.Path, "features"), "--out", run], output, error)
            .WaitAsync(TimeSpan.FromMinutes(3));
        Assert.True(code == 0, error.ToString());
        using var trained = Checkpoint.Load(Path.Combine(run, "model"));
        Assert.Contains("fine-tuned from ResNet18.onnx", trained.Manifest.Description);
        Assert.Equal(2, (int)trained.Manifest.Training!["options"]!["frozenEpochs"]!);
        // A linear probe on cached features: two seeds averaged into one head, two augmented views.
        Assert.Equal([1, 2], trained.Manifest.Training["probe"]!["seeds"]!.AsArray().Select(s => (int)s!));
        Assert.Equal(2, (int)trained.Manifest.Training["probe"]!["augmentedViews"]!);
        Assert.Equal(2, Directory.GetFiles(Path.Combine(dir.Path, "features"), "*.features").Length); // plain and augmented
        Assert.Equal([0f], trained.Manifest.Preprocessing.Mean);
        // A linear probe of the bundled ImageNet weights stores only its head.
        Assert.Equal(ModelManifest.BaseWeightsImageNetCntk, trained.Manifest.BaseWeights);
        Assert.Equal(["fc.bias", "fc.weight"], Checkpoint.ReadWeightsHeader(Path.Combine(run, "model", Checkpoint.WeightsFileName)).Keys.Order());

        code = await TrainApp.RunAsync(["train", "--synthetic", "24", "--arch", "small_cnn", "--init", "imagenet", "--epochs", "1", "--out", run], output, error);
        Assert.Equal(2, code);
        Assert.Contains("fit resnet18_cntk", error.ToString());
    }

    [Fact]
    public async Task CrossValidate_PoolsOutOfFoldPredictionsForEveryImage()
    {
        using var dir = new TempDirectory();
        var report = Path.Combine(dir.Path, "cv");
        var output = new StringWriter();
        var error = new StringWriter();

        var code = await TrainApp.RunAsync(
            ["crossval", "--synthetic", "60", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--folds", "3", "--bootstrap", "50", "--report", report],
            output, error).WaitAsync(TimeSpan.FromMinutes(3));

        Assert.True(code == 0, error.ToString());
        Assert.Contains("fold 3/3", output.ToString());
        var metrics = System.Text.Json.Nodes.JsonNode.Parse(await File.ReadAllTextAsync(Path.Combine(report, "metrics.json")))!;
        Assert.Equal(60, (int)metrics["images"]!);
        Assert.Equal(5, metrics["classes"]!.AsArray().Count);
    }

    [Fact]
    public async Task CrossvalProbe_ThenTrainOnAll_ThenCalibrate_WritesCalibrationAndOperatingPoints_EvaluateUsesThem()
    {
        using var dir = new TempDirectory();
        var cache = Path.Combine(dir.Path, "features");
        var cv = Path.Combine(dir.Path, "cv");
        var run = Path.Combine(dir.Path, "run");
        var output = new StringWriter();
        var error = new StringWriter();
        string[] recipe = ["--synthetic", "40", "--arch", "resnet18_cntk_gray", "--init", "imagenet", "--epochs", "5", "--frozen-epochs", "5",
            "--lr", "1e-2", "--batch-size", "8", "--no-augment", "--feature-cache", cache];

        var code = await TrainApp.RunAsync(["crossval", .. recipe, "--folds", "4", "--seeds", "2", "--bootstrap", "20", "--report", cv], output, error)
            .WaitAsync(TimeSpan.FromMinutes(3));
        Assert.True(code == 0, error.ToString());
        var oof = XRay.Model.Evaluation.OutOfFoldPredictions.Read(Path.Combine(cv, "oof.csv"));
        Assert.Equal(40, oof.Count);
        Assert.Equal([0, 1, 2, 3], oof.Folds.Distinct().Order());

        // Train on every image (no validation or test split): the features come from the cache crossval filled.
        code = await TrainApp.RunAsync(["train", .. recipe, "--seeds", "2", "--val-fraction", "0", "--test-fraction", "0", "--model-version", "3.0.0", "--out", run],
            output, error).WaitAsync(TimeSpan.FromMinutes(3));
        Assert.True(code == 0, error.ToString());
        Assert.Contains("x 1 view(s) from", output.ToString());

        var model = Path.Combine(run, "model");
        var calibration = Path.Combine(dir.Path, "calibration");
        code = await TrainApp.RunAsync(["calibrate", "--predictions", Path.Combine(cv, "oof.csv"), "--model", model, "--write",
            "--operating-point", "sensitivity:0.5", "--report", calibration], output, error).WaitAsync(TimeSpan.FromMinutes(1));
        Assert.True(code == 0, error.ToString());
        Assert.Contains("ECE before", await File.ReadAllTextAsync(Path.Combine(calibration, "calibration.md")));
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], (await File.ReadAllBytesAsync(Path.Combine(calibration, "reliability.png")))[..4]);

        using var calibrated = Checkpoint.Load(model);
        var manifest = calibrated.Manifest;
        Assert.Equal(5, manifest.Calibration!.Classes.Count);
        Assert.Equal(manifest.Thresholds, manifest.OperatingPoints!.Classes.Select(p => p.Threshold));
        Assert.All(manifest.OperatingPoints.Classes, p => Assert.StartsWith("sensitivity >= 0.5", p.Rule));
        Assert.All(manifest.OperatingPoints.Classes.Where(p => p.Prevalence > 0), p => Assert.True(p.Sensitivity >= 0.5));

        var report = Path.Combine(dir.Path, "report");
        code = await TrainApp.RunAsync(["evaluate", "--model", model, "--on", "all", "--bootstrap", "20", "--report", report], output, error)
            .WaitAsync(TimeSpan.FromMinutes(3));
        Assert.True(code == 0, error.ToString());
        var markdown = await File.ReadAllTextAsync(Path.Combine(report, "report.md"));
        Assert.Contains("| positive rate | prevalence |", markdown);
        Assert.Contains("sensitivity >= 0.5", markdown);
        Assert.Contains("calibrated by the manifest's Platt scaling", markdown);
    }

    [Fact]
    public async Task Train_WithoutData_FailsWithAClearMessage()
    {
        var error = new StringWriter();
        var code = await TrainApp.RunAsync(["train", "--out", "/nonexistent/x"], new StringWriter(), error).WaitAsync(TimeSpan.FromMinutes(1));

        Assert.Equal(2, code);
        Assert.Contains("--nih-csv, --csv or --synthetic", error.ToString());
    }

    [Fact]
    public async Task ExportThenImport_RoundTripsTheDefaultModelThroughSafetensors()
    {
        using var dir = new TempDirectory();
        var exported = Path.Combine(dir.Path, "exported");
        var imported = Path.Combine(dir.Path, "imported");
        var error = new StringWriter();

        Assert.Equal(0, await TrainApp.RunAsync(["export", "--model", "default", "--out", exported], new StringWriter(), error).WaitAsync(TimeSpan.FromMinutes(1)));
        Assert.Equal(0, await TrainApp.RunAsync(
            ["import", "--safetensors", Path.Combine(exported, "model.safetensors"), "--manifest", Path.Combine(exported, "manifest.json"), "--out", imported],
            new StringWriter(), error).WaitAsync(TimeSpan.FromMinutes(1)));

        using var original = DefaultModel.Create();
        using var roundTripped = Checkpoint.Load(imported);
        var input = TestModels.Input(1, seed: 8, channels: original.Manifest.Preprocessing.Channels);
        Assert.Equal(TestModels.DirectForward(original.Network, input, 1), TestModels.DirectForward(roundTripped.Network, input, 1));
    }
}
