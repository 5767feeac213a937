using XRay.Model.Onnx;

namespace XRay.Model.Tests;

public sealed class OnnxRuntimeRunnerTests
{
    [Fact]
    public void Cuda_WithoutTheCudaProvider_IsRefusedNamingTheGpuBuild()
    {
        using var model = TestModels.Seeded("small_cnn");
        if (OnnxRuntimeRunner.CudaAvailable)
        {
            // The GPU build on a GPU machine: cuda is served.
            using var cuda = new OnnxRuntimeRunner(model, new RunnerOptions { Device = "cuda" });
            Assert.Equal("cuda", cuda.Device);
            return;
        }

        var error = Assert.Throws<ArgumentException>(() => new OnnxRuntimeRunner(model, new RunnerOptions { Device = "cuda" }));

        Assert.Contains(OnnxRuntimeRunner.CudaProvider, error.Message);
        Assert.Contains("-p:OnnxRuntimeGpu=true", error.Message);
    }

    [Fact]
    public void Bf16_IsRefused_AndAutoRunsOnTheCpu()
    {
        using var model = TestModels.Seeded("small_cnn");

        var error = Assert.Throws<ArgumentException>(() => new OnnxRuntimeRunner(model, new RunnerOptions { Precision = "bf16" }));
        Assert.Contains("fp32", error.Message);
        using var runner = new OnnxRuntimeRunner(model, new RunnerOptions { Device = "auto" });
        Assert.Equal(OnnxRuntimeRunner.CudaAvailable ? "cuda" : "cpu", runner.Device);
        Assert.Equal("onnxruntime", runner.Runtime);
    }

    [Fact]
    public void IntraOpThreads_DefaultSplitsTheCoresBetweenWorkers()
    {
        using var model = TestModels.Seeded("small_cnn");
        using var two = new OnnxRuntimeRunner(model, new RunnerOptions { Workers = 2 });
        using var three = new OnnxRuntimeRunner(model, new RunnerOptions { IntraOpThreads = 3 });

        Assert.Equal(Math.Max(1, Environment.ProcessorCount / 2), two.IntraOpThreads);
        Assert.Equal(3, three.IntraOpThreads);
    }

    [Fact]
    public async Task RunAsync_ReadsOnlyTheBatchRows_AndWritesOnlyItsLogits()
    {
        using var model = TestModels.Seeded("small_cnn");
        using var runner = new OnnxRuntimeRunner(model, new RunnerOptions());
        var input = TestModels.Input(3, seed: 4);
        var expected = await runner.RunAsync(input[..(2 * runner.InputLength)], 2);

        // A pooled buffer is longer than the batch: the extra rows and logits are neither read nor written.
        var logits = Enumerable.Repeat(float.NaN, 3 * runner.NumClasses).ToArray();
        await runner.RunAsync(input, 2, logits);

        Assert.Equal(expected, logits[..(2 * runner.NumClasses)]);
        Assert.All(logits[(2 * runner.NumClasses)..], v => Assert.True(float.IsNaN(v)));
    }
}
