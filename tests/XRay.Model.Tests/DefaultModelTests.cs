namespace XRay.Model.Tests;

public class DefaultModelTests
{
    [Fact]
    public void Create_Twice_GivesIdenticalLogits()
    {
        using var first = DefaultModel.Create();
        using var second = DefaultModel.Create();
        var input = TestModels.Input(2, seed: 11);

        var a = TestModels.DirectForward(first.Network, input, 2);
        var b = TestModels.DirectForward(second.Network, input, 2);

        Assert.Equal(a, b);
        Assert.NotEqual(a[..14], a[14..]); // the output depends on the input
    }

    [Fact]
    public void Create_DescribesAnUntrainedNih14SmallCnn()
    {
        using var model = DefaultModel.Create();

        Assert.Equal("xray-demo-small-cnn", model.Manifest.Name);
        Assert.Equal("0.1.0", model.Manifest.Version);
        Assert.Equal("small_cnn", model.Manifest.Architecture);
        Assert.Equal(ChestXrayFindings.Nih14, model.Manifest.ClassNames);
        Assert.Contains("untrained", model.Manifest.Description, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("not for clinical use", model.Manifest.Description, StringComparison.OrdinalIgnoreCase);
        Assert.False(model.Network.training);
    }
}
