namespace XRay.Model.Tests;

public class DefaultModelTests
{
    [Fact]
    public void Create_Twice_GivesIdenticalLogits()
    {
        using var first = DefaultModel.Create();
        using var second = DefaultModel.Create();
        var input = TestModels.Input(2, seed: 11, channels: first.Manifest.Preprocessing.Channels);

        var a = TestModels.DirectForward(first.Network, input, 2);
        var b = TestModels.DirectForward(second.Network, input, 2);

        Assert.Equal(a, b);
        Assert.NotEqual(a[..14], a[14..]); // the output depends on the input
    }

    [Fact]
    public void Create_DescribesAnImageNetProbeOnNih14_NotForClinicalUse()
    {
        using var model = DefaultModel.Create();

        Assert.Equal(DefaultModel.Name, model.Manifest.Name);
        Assert.Equal(DefaultModel.Version, model.Manifest.Version);
        Assert.Equal(Architectures.ResNet18CntkGray, model.Manifest.Architecture);
        Assert.Equal(ModelManifest.BaseWeightsImageNetCntk, model.Manifest.BaseWeights);
        Assert.Equal(10, (int)model.Manifest.Training!["options"]!["frozenEpochs"]!);
        Assert.Equal(ChestXrayFindings.Nih14, model.Manifest.ClassNames);
        Assert.Contains("not for clinical use", model.Manifest.Description, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("NIH ChestX-ray14", model.Manifest.Description);
        Assert.Equal("xray-train train", (string?)model.Manifest.Training!["tool"]);
        Assert.StartsWith("xray-train train ", (string?)model.Manifest.Training["command"]);
        Assert.Equal("nih", (string?)model.Manifest.Training["data"]!["kind"]);
        Assert.Equal(224, model.Manifest.Preprocessing.CropSize);
        Assert.False(model.Network.training);
    }

    [Fact]
    public void Create_BackboneIsExactlyTheImportedImageNetNetwork_OnlyTheHeadWasTrained()
    {
        using var model = DefaultModel.Create();
        var backbone = XRay.Model.Onnx.CntkResNetImporter.BundledBackbone;
        using var imported = XRay.Model.Onnx.CntkResNetImporter.Create(
            backbone,
            XRay.Model.Onnx.CntkResNetImporter.MeanImageBeside(backbone),
            gray: true, numClasses: 14);
        var reference = imported.state_dict();
        foreach (var (name, value) in model.Network.state_dict())
        {
            var same = value.allclose(reference[name], rtol: 0, atol: 0);
            Assert.True(name.StartsWith("fc.", StringComparison.Ordinal) ? !same : same, name);
        }
    }

    [Fact]
    public void Create_MatchesTheCheckpointFolderInTheRepository()
    {
        // The embedded resources are DefaultCheckpoint/ as committed: Checkpoint.Load of the folder gives the same model.
        var folder = FindUp(Path.Combine("model", "XRay.Model", "DefaultCheckpoint"));
        Assert.NotNull(folder);
        using var embedded = DefaultModel.Create();
        using var loaded = Checkpoint.Load(folder);
        var input = TestModels.Input(2, seed: 4, channels: loaded.Manifest.Preprocessing.Channels);

        Assert.Equal(loaded.Manifest.ToJson(), embedded.Manifest.ToJson());
        Assert.Equal(TestModels.DirectForward(loaded.Network, input, 2), TestModels.DirectForward(embedded.Network, input, 2));
    }

    private static string? FindUp(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (Directory.Exists(Path.Combine(dir.FullName, relative)))
            {
                return Path.Combine(dir.FullName, relative);
            }
        }

        return null;
    }
}
