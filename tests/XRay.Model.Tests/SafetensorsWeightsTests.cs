using XRay.Model.Checkpoints;
using static TorchSharp.torch;

namespace XRay.Model.Tests;

public class SafetensorsWeightsTests
{
    [Theory]
    [InlineData("small_cnn")]
    [InlineData("resnet18")]
    public void SaveThenImport_GivesIdenticalLogits(string architecture)
    {
        using var dir = new TempDirectory();
        using var model = TestModels.Seeded(architecture, classes: 14, seed: 5);
        var path = Path.Combine(dir.Path, "model.safetensors");

        SafetensorsWeights.Save(path, model.Network);
        using var imported = SafetensorsWeights.Import(path, model.Manifest);

        var input = TestModels.Input(2, seed: 1, crop: 96);
        Assert.Equal(TestModels.DirectForward(model.Network, input, 2, crop: 96), TestModels.DirectForward(imported.Network, input, 2, crop: 96));
        Assert.False(imported.Network.training);
    }

    [Fact]
    public void Save_UsesTorchvisionTensorNames_InTheSafetensorsHeader()
    {
        using var dir = new TempDirectory();
        using var model = TestModels.Seeded("resnet18");
        var path = Path.Combine(dir.Path, "model.safetensors");
        SafetensorsWeights.Save(path, model.Network);

        // safetensors: 8-byte little-endian header length, then a JSON object keyed by tensor name.
        var bytes = File.ReadAllBytes(path);
        var header = System.Text.Json.JsonDocument.Parse(bytes.AsMemory(8, (int)BitConverter.ToUInt64(bytes, 0))).RootElement;
        Assert.Equal("F32", header.GetProperty("conv1.weight").GetProperty("dtype").GetString());
        Assert.Equal([64, 3, 7, 7], header.GetProperty("conv1.weight").GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()));
        Assert.True(header.TryGetProperty("layer4.1.bn2.running_var", out _));
        Assert.Equal([14, 512], header.GetProperty("fc.weight").GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()));
    }

    [Fact]
    public void Import_WrongClassCount_IsRefusedNamingTheTensorAndBothShapes()
    {
        using var dir = new TempDirectory();
        using var model = TestModels.Seeded("small_cnn", classes: 15);
        var path = Path.Combine(dir.Path, "model.safetensors");
        SafetensorsWeights.Save(path, model.Network);

        var e = Assert.Throws<InvalidDataException>(() => SafetensorsWeights.Import(path, TestModels.Manifest("small_cnn", classes: 14)));

        Assert.Contains("'classifier.weight'", e.Message);
        Assert.Contains("[15, 128]", e.Message);
        Assert.Contains("[14, 128]", e.Message);
    }

    [Fact]
    public void Import_MissingTensor_IsRefusedNamingIt()
    {
        using var dir = new TempDirectory();
        using var model = TestModels.Seeded("small_cnn");
        var path = Path.Combine(dir.Path, "partial.safetensors");
        SaveStateDict(path, model.Network.state_dict().Where(kv => kv.Key != "features.bn2.running_mean"));

        var e = Assert.Throws<InvalidDataException>(() => SafetensorsWeights.Import(path, model.Manifest));

        Assert.Contains("missing tensor 'features.bn2.running_mean'", e.Message);
    }

    [Fact]
    public void Import_DataParallelPrefix_IsRefusedWithAHint_AndAcceptedWhenStripped()
    {
        using var dir = new TempDirectory();
        using var model = TestModels.Seeded("small_cnn");
        var path = Path.Combine(dir.Path, "prefixed.safetensors");
        SaveStateDict(path, model.Network.state_dict().Select(kv => KeyValuePair.Create("module." + kv.Key, kv.Value)));

        var e = Assert.Throws<InvalidDataException>(() => SafetensorsWeights.Import(path, model.Manifest));
        Assert.Contains("start with 'module.'", e.Message);

        using var imported = SafetensorsWeights.Import(path, model.Manifest, stripPrefix: "module.");
        var input = TestModels.Input(1, seed: 2, crop: 64);
        Assert.Equal(TestModels.DirectForward(model.Network, input, 1, crop: 64), TestModels.DirectForward(imported.Network, input, 1, crop: 64));
    }

    [Fact]
    public void Import_NotSafetensors_IsRefusedClearly()
    {
        using var dir = new TempDirectory();
        var path = Path.Combine(dir.Path, "junk.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);

        Assert.Throws<InvalidDataException>(() => SafetensorsWeights.Import(path, TestModels.Manifest("small_cnn")));
    }

    /// <summary>A safetensors file with exactly these tensors, written by the format's definition (not by the code under test).</summary>
    private static void SaveStateDict(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors)
    {
        var entries = tensors.ToArray();
        var header = new System.Text.Json.Nodes.JsonObject();
        long offset = 0;
        var data = new List<byte[]>();
        foreach (var (name, tensor) in entries)
        {
            var bytes = tensor.contiguous().bytes.ToArray();
            header[name] = new System.Text.Json.Nodes.JsonObject
            {
                ["dtype"] = tensor.dtype == ScalarType.Int64 ? "I64" : "F32",
                ["shape"] = new System.Text.Json.Nodes.JsonArray(tensor.shape.Select(d => (System.Text.Json.Nodes.JsonNode?)d).ToArray()),
                ["data_offsets"] = new System.Text.Json.Nodes.JsonArray(offset, offset + bytes.Length),
            };
            offset += bytes.Length;
            data.Add(bytes);
        }

        var json = System.Text.Encoding.UTF8.GetBytes(header.ToJsonString());
        using var stream = File.Create(path);
        stream.Write(BitConverter.GetBytes((ulong)json.Length));
        stream.Write(json);
        foreach (var bytes in data)
        {
            stream.Write(bytes);
        }
    }
}
