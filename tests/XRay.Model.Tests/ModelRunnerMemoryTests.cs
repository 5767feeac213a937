using static TorchSharp.torch;

namespace XRay.Model.Tests;

[CollectionDefinition(nameof(TensorCountCollection), DisableParallelization = true)]
public sealed class TensorCountCollection;

/// <summary>Counts live tensors process-wide, so it runs alone (after the parallel tests).</summary>
[Collection(nameof(TensorCountCollection))]
public class ModelRunnerMemoryTests
{
    [Fact]
    public async Task RunAsync_AfterWarmUp_LeavesLiveTensorCountUnchanged()
    {
        using var model = TestModels.Seeded("small_cnn");
        using var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu", Workers = 2 });
        var inputs = new[] { TestModels.Input(1, seed: 1), TestModels.Input(2, seed: 2) };
        await runner.WarmUpAsync([1, 2]).WaitAsync(TimeSpan.FromSeconds(60));
        var before = LiveTensors();

        for (var i = 0; i < 200; i += 2)
        {
            // Two at a time, so both workers are busy.
            await Task.WhenAll(runner.RunAsync(inputs[0], 1), runner.RunAsync(inputs[1], 2)).WaitAsync(TimeSpan.FromSeconds(60));
        }

        // No collection here: a tensor left to the finalizer instead of its dispose scope must show up as live.
        Assert.Equal(before, Tensor.TotalCount);
    }

    /// <summary>Tensor.TotalCount after finalizers have run, so earlier tests' garbage cannot move it mid-measurement.</summary>
    private static long LiveTensors()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return Tensor.TotalCount;
    }
}
