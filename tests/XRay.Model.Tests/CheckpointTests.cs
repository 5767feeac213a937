using System.Text.Json.Nodes;

namespace XRay.Model.Tests;

public class CheckpointTests
{
    [Theory]
    [InlineData("small_cnn")]
    [InlineData("resnet18")]
    public void SaveThenLoad_GivesIdenticalLogits(string architecture)
    {
        using var temp = new TempDirectory();
        using var original = TestModels.Seeded(architecture);
        var manifest = original.Manifest with
        {
            Thresholds = Enumerable.Range(0, 14).Select(i => 0.3f + i * 0.01f).ToArray(),
            Description = "test",
            Training = new JsonObject { ["epochs"] = 3 },
        };
        var input = TestModels.Input(2, seed: 3);
        var expected = TestModels.DirectForward(original.Network, input, 2);

        Checkpoint.Save(temp.Path, manifest, original.Network);
        using var loaded = Checkpoint.Load(temp.Path);

        Assert.Equal(expected, TestModels.DirectForward(loaded.Network, input, 2));
        Assert.False(loaded.Network.training);
        Assert.Equal(manifest.ClassNames, loaded.Manifest.ClassNames);
        Assert.Equal(manifest.Thresholds, loaded.Manifest.Thresholds);
        Assert.Equal(3, (int)loaded.Manifest.Training!["epochs"]!);
        Assert.False(File.Exists(Path.Combine(temp.Path, "weights.bin.tmp")));
    }

    [Fact]
    public void Save_WritesCamelCaseManifestWithoutDerivedFields()
    {
        using var temp = new TempDirectory();
        using var model = TestModels.Seeded("small_cnn");

        Checkpoint.Save(temp.Path, model.Manifest, model.Network);

        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(temp.Path, "manifest.json")))!.AsObject();
        Assert.Equal("small_cnn", (string?)json["architecture"]);
        Assert.Equal(14, json["classNames"]!.AsArray().Count);
        Assert.Equal(224, (int)json["preprocessing"]!["resizeSize"]!);
        Assert.Equal(0.229f, (float)json["preprocessing"]!["std"]![0]!);
        Assert.False(json.ContainsKey("effectiveThresholds"));
        Assert.False(json["preprocessing"]!.AsObject().ContainsKey("outputLength"));
        Assert.False(json.ContainsKey("Architecture"));
    }

    [Fact]
    public void Load_WeightsOfAnotherArchitecture_IsRefusedNamingTheParameter()
    {
        using var temp = new TempDirectory();
        using var model = TestModels.Seeded("resnet18");
        Checkpoint.Save(temp.Path, model.Manifest, model.Network);
        RewriteManifest(temp.Path, model.Manifest with { Architecture = "small_cnn" });

        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Load(temp.Path));

        Assert.Contains("'features.conv1.weight'", e.Message);
        Assert.Contains("small_cnn", e.Message);
    }

    [Fact]
    public void Load_WeightsForAnotherClassCount_IsRefusedNamingParameterAndShapes()
    {
        using var temp = new TempDirectory();
        using var model = TestModels.Seeded("small_cnn");
        Checkpoint.Save(temp.Path, model.Manifest, model.Network);
        RewriteManifest(temp.Path, TestModels.Manifest("small_cnn", classes: 3));

        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Load(temp.Path));

        Assert.Contains("'classifier.weight'", e.Message);
        Assert.Contains("[14, 128]", e.Message);
        Assert.Contains("[3, 128]", e.Message);
    }

    [Fact]
    public void Save_NetworkNotMatchingManifest_ThrowsArgumentException()
    {
        using var temp = new TempDirectory();
        using var model = TestModels.Seeded("small_cnn", classes: 5);

        var e = Assert.Throws<ArgumentException>(() => Checkpoint.Save(temp.Path, TestModels.Manifest("small_cnn"), model.Network));

        Assert.Contains("'classifier.weight'", e.Message);
        Assert.Empty(Directory.GetFiles(temp.Path));
    }

    [Fact]
    public void Load_TruncatedWeights_ThrowsInvalidDataException()
    {
        using var temp = new TempDirectory();
        using var model = TestModels.Seeded("small_cnn");
        Checkpoint.Save(temp.Path, model.Manifest, model.Network);
        var weights = Path.Combine(temp.Path, "weights.bin");
        var bytes = File.ReadAllBytes(weights);
        File.WriteAllBytes(weights, bytes[..(bytes.Length - 100)]);

        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Load(temp.Path));
        Assert.Contains("weights.bin", e.Message);
    }

    [Fact]
    public void Load_InvalidOrMissingManifest_IsReported()
    {
        using var temp = new TempDirectory();
        Assert.Throws<FileNotFoundException>(() => Checkpoint.Load(temp.Path));

        using var model = TestModels.Seeded("small_cnn");
        Checkpoint.Save(temp.Path, model.Manifest, model.Network);
        var manifestPath = Path.Combine(temp.Path, "manifest.json");

        File.WriteAllText(manifestPath, "{ \"name\": \"x\" }");
        Assert.Contains("manifest.json", Assert.Throws<InvalidDataException>(() => Checkpoint.Load(temp.Path)).Message);

        RewriteManifest(temp.Path, model.Manifest with { Thresholds = [0.5f] });
        Assert.Contains("thresholds", Assert.Throws<InvalidDataException>(() => Checkpoint.Load(temp.Path)).Message);
    }

    private static void RewriteManifest(string directory, ModelManifest manifest) =>
        File.WriteAllText(Path.Combine(directory, "manifest.json"), manifest.ToJson());
}
