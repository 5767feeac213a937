using System.Text.Json.Nodes;

namespace XRay.Model.Tests;

public class ModelManifestTests
{
    [Fact]
    public void Nih14_HasTheFourteenFindingsInDatasetOrder()
    {
        Assert.Equal(14, ChestXrayFindings.Nih14.Count);
        Assert.Equal("Atelectasis", ChestXrayFindings.Nih14[0]);
        Assert.Equal("Pleural_Thickening", ChestXrayFindings.Nih14[12]);
        Assert.Equal("Hernia", ChestXrayFindings.Nih14[13]);
    }

    [Fact]
    public void EffectiveThresholds_DefaultToOneHalfPerClass()
    {
        var manifest = TestModels.Manifest("small_cnn", classes: 3);
        Assert.Equal([0.5f, 0.5f, 0.5f], manifest.EffectiveThresholds);

        var custom = manifest with { Thresholds = [0.1f, 0.2f, 0.3f] };
        Assert.Equal([0.1f, 0.2f, 0.3f], custom.EffectiveThresholds);
    }

    [Fact]
    public void EffectiveThresholds_WrongCount_Throws()
    {
        var manifest = TestModels.Manifest("small_cnn", classes: 3) with { Thresholds = [0.1f] };
        Assert.Throws<InvalidOperationException>(() => manifest.EffectiveThresholds);
    }

    [Fact]
    public void Json_RoundTripsEveryField()
    {
        var manifest = TestModels.Manifest("densenet121") with
        {
            Thresholds = Enumerable.Repeat(0.25f, 14).ToArray(),
            Preprocessing = new PreprocessingSpec { ResizeSize = 256, CropSize = 224 },
            Description = "CheXNet-style",
            Training = new JsonObject { ["auroc"] = 0.84 },
        };

        var back = ModelManifest.FromJson(manifest.ToJson());

        Assert.Equal(manifest.Name, back.Name);
        Assert.Equal(manifest.Architecture, back.Architecture);
        Assert.Equal(manifest.ClassNames, back.ClassNames);
        Assert.Equal(manifest.Thresholds, back.Thresholds);
        Assert.Equal(256, back.Preprocessing.ResizeSize);
        Assert.Equal(manifest.Preprocessing.Mean, back.Preprocessing.Mean);
        Assert.Equal(0.84, (double)back.Training!["auroc"]!);
    }

    [Fact]
    public void FromJson_MissingRequiredField_Throws()
    {
        Assert.ThrowsAny<System.Text.Json.JsonException>(() => ModelManifest.FromJson("{\"name\":\"a\",\"version\":\"1\"}"));
    }

    [Theory]
    [InlineData("unknown architecture")]
    [InlineData("duplicate class")]
    [InlineData("threshold out of range")]
    [InlineData("empty classes")]
    public void Validate_RejectsInvalidManifests(string problem)
    {
        var valid = TestModels.Manifest("small_cnn", classes: 2);
        valid.Validate();
        var invalid = problem switch
        {
            "unknown architecture" => valid with { Architecture = "alexnet" },
            "duplicate class" => valid with { ClassNames = ["a", "a"] },
            "threshold out of range" => valid with { Thresholds = [0.5f, 1.5f] },
            _ => valid with { ClassNames = [] },
        };

        Assert.Throws<ArgumentException>(invalid.Validate);
    }

    [Fact]
    public void Sigmoid_IsStableAtTheExtremes()
    {
        Assert.Equal(0.5f, Probabilities.Sigmoid(0f));
        Assert.Equal(1f, Probabilities.Sigmoid(100f));
        Assert.Equal(0f, Probabilities.Sigmoid(-200f));
        Assert.Equal(1f / (1f + MathF.Exp(-1.5f)), Probabilities.Sigmoid(1.5f), 6);
        Assert.False(float.IsNaN(Probabilities.Sigmoid(-1000f)));
    }
}
