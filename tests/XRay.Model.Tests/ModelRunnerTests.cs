using System.Collections.Concurrent;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace XRay.Model.Tests;

public class ModelRunnerTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData("small_cnn", 2)]
    [InlineData("resnet18", 1)]
    public async Task RunAsync_EqualsDirectForwardUnderNoGrad(string architecture, int batch)
    {
        using var model = TestModels.Seeded(architecture);
        using var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu" });
        var input = TestModels.Input(batch, seed: 5);
        var expected = TestModels.DirectForward(model.Network, input, batch);

        var actual = await runner.RunAsync(input, batch).WaitAsync(Timeout);

        Assert.Equal(batch * 14, actual.Length);
        Assert.True(TestModels.MaxAbsDifference(expected, actual) <= 1e-5f);
    }

    [Fact]
    public async Task RunAsync_FromManyConcurrentTasks_GivesEachItsOwnRows()
    {
        using var model = TestModels.Seeded("small_cnn");
        using var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu", Workers = 2 });
        var requests = Enumerable.Range(0, 24)
            .Select(i => (Batch: 1 + i % 3, Input: TestModels.Input(1 + i % 3, seed: 100 + i)))
            .ToArray();
        var expected = requests.Select(r => TestModels.DirectForward(model.Network, r.Input, r.Batch)).ToArray();

        var results = await Task.WhenAll(requests.Select(r => Task.Run(() => runner.RunAsync(r.Input, r.Batch))))
            .WaitAsync(Timeout);

        for (var i = 0; i < requests.Length; i++)
        {
            Assert.True(TestModels.MaxAbsDifference(expected[i], results[i]) <= 1e-5f, $"request {i}");
        }
    }

    [Theory]
    [InlineData("small_cnn")]
    [InlineData("resnet18")]
    public async Task Bf16_IsCloseToFp32(string architecture)
    {
        using var fp32Model = TestModels.Seeded(architecture);
        using var bf16Model = TestModels.Seeded(architecture);
        using var fp32 = new ModelRunner(fp32Model, new RunnerOptions { Device = "cpu", Precision = "fp32" });
        using var bf16 = new ModelRunner(bf16Model, new RunnerOptions { Device = "cpu", Precision = "bf16" });
        var input = ImageLikeInput(fp32.InputLength, batch: 2);

        var a = await fp32.RunAsync(input, 2).WaitAsync(Timeout);
        var b = await bf16.RunAsync(input, 2).WaitAsync(Timeout);

        var maxDelta = a.Zip(b, (x, y) => Math.Abs(Probabilities.Sigmoid(x) - Probabilities.Sigmoid(y))).Max();
        output.WriteLine($"{architecture}: bf16 vs fp32 max |delta probability| = {maxDelta:G3}");
        Assert.Equal("bf16", bf16.Precision);
        Assert.Equal(ScalarType.BFloat16, bf16Model.Network.parameters().First().dtype);
        Assert.True(maxDelta < 0.02f, $"max |delta probability| {maxDelta}");
        Assert.True(maxDelta > 0f, "bf16 should not be bit-identical to fp32");
    }

    [Theory]
    [InlineData("tpu", "fp32", 1)]
    [InlineData("cpu", "fp16", 1)]
    [InlineData("cpu", "fp32", 0)]
    [InlineData("cpu", "fp32", 65)]
    public void Constructor_InvalidOptions_ThrowsArgumentException(string device, string precision, int workers)
    {
        using var model = TestModels.Seeded("small_cnn");

        var e = Assert.Throws<ArgumentException>(
            () => new ModelRunner(model, new RunnerOptions { Device = device, Precision = precision, Workers = workers }));
        Assert.Contains(workers is 0 or 65 ? "Workers" : device == "tpu" ? "tpu" : "fp16", e.Message);
    }

    [Fact]
    public void Constructor_CudaWithoutCuda_ThrowsArgumentException()
    {
        if (cuda.is_available())
        {
            return; // nothing to refuse on a GPU machine
        }

        using var model = TestModels.Seeded("small_cnn");
        var e = Assert.Throws<ArgumentException>(() => new ModelRunner(model, new RunnerOptions { Device = "cuda" }));
        Assert.Contains("CUDA is not available", e.Message);
    }

    [Fact]
    public void Constructor_Auto_ResolvesToAvailableDevice()
    {
        using var model = TestModels.Seeded("small_cnn");
        using var runner = new ModelRunner(model, new RunnerOptions());

        Assert.Equal(cuda.is_available() ? "cuda" : "cpu", runner.Device);
        Assert.Equal("fp32", runner.Precision);
        Assert.Equal(3 * 224 * 224, runner.InputLength);
        Assert.Equal(14, runner.NumClasses);
        Assert.Same(model.Manifest, runner.Manifest);
    }

    [Fact]
    public async Task RunAsync_WrongInputLength_ThrowsArgumentException()
    {
        using var model = TestModels.Seeded("small_cnn");
        using var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu" });

        Assert.Throws<ArgumentException>(() => { _ = runner.RunAsync(new float[runner.InputLength], 2); });
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = runner.RunAsync([], 0); });
        await Assert.ThrowsAnyAsync<OperationCanceledException>(
            () => runner.RunAsync(new float[runner.InputLength], 1, new CancellationToken(canceled: true)));
    }

    [Fact]
    public async Task Worker_RunsWithGradDisabled_EvenThoughParametersRequireGrad()
    {
        using var probe = new ProbeNetwork(Architectures.Create("small_cnn", 14));
        using var model = new LoadedModel(TestModels.Manifest("small_cnn"), probe);
        Assert.All(probe.parameters(), p => Assert.True(p.requires_grad));
        Assert.True(is_grad_enabled()); // this (test) thread records gradients
        using var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu" });

        await runner.RunAsync(TestModels.Input(1, seed: 1), 1).WaitAsync(Timeout);

        var call = Assert.Single(probe.Calls);
        Assert.False(call.GradEnabled);
        Assert.False(call.OutputRequiresGrad);
        Assert.StartsWith("xray-inference-", call.Thread);
        Assert.False(probe.training);
    }

    [Fact]
    public async Task WarmUpAsync_RunsEachBatchSizeOnEveryWorker()
    {
        using var probe = new ProbeNetwork(Architectures.Create("small_cnn", 14));
        using var model = new LoadedModel(TestModels.Manifest("small_cnn"), probe);
        using var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu", Workers = 2 });

        await runner.WarmUpAsync([1, 2, 2]).WaitAsync(Timeout);

        var calls = probe.Calls.ToArray();
        Assert.Equal(4, calls.Length);
        foreach (var batch in new[] { 1, 2 })
        {
            Assert.Equal(
                ["xray-inference-0", "xray-inference-1"],
                calls.Where(c => c.Batch == batch).Select(c => c.Thread).Order().ToArray());
        }
    }

    [Fact]
    public async Task RunAsync_CancelledWhileQueued_IsCancelledAndNeverRuns()
    {
        using var probe = new ProbeNetwork(Architectures.Create("small_cnn", 14)) { Gate = new SemaphoreSlim(0) };
        using var model = new LoadedModel(TestModels.Manifest("small_cnn"), probe);
        using var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu" });
        using var cancellation = new CancellationTokenSource();

        var running = runner.RunAsync(TestModels.Input(1, seed: 1), 1);
        await probe.Entered.WaitAsync(Timeout); // the only worker is now inside forward
        var queued = runner.RunAsync(TestModels.Input(2, seed: 2), 2, cancellation.Token);
        cancellation.Cancel();
        probe.Gate.Release();

        await running.WaitAsync(Timeout);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => queued.WaitAsync(Timeout));
        Assert.DoesNotContain(probe.Calls, c => c.Batch == 2);
    }

    [Fact]
    public async Task Dispose_FailsQueuedRequestsAndRefusesNewOnes()
    {
        using var probe = new ProbeNetwork(Architectures.Create("small_cnn", 14)) { Gate = new SemaphoreSlim(0) };
        using var model = new LoadedModel(TestModels.Manifest("small_cnn"), probe);
        var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu" });

        var running = runner.RunAsync(TestModels.Input(1, seed: 1), 1);
        await probe.Entered.WaitAsync(Timeout);
        var queued = runner.RunAsync(TestModels.Input(1, seed: 2), 1);
        var disposing = Task.Run(runner.Dispose); // joins the worker, which is held inside forward
        Assert.True(SpinWait.SpinUntil(() => IsDisposed(runner), Timeout), "Dispose did not start");

        probe.Gate.Release();
        await disposing.WaitAsync(Timeout);

        Assert.Equal(14, (await running.WaitAsync(Timeout)).Length); // the running request completes
        await Assert.ThrowsAsync<ObjectDisposedException>(() => queued.WaitAsync(Timeout));
        Assert.Throws<ObjectDisposedException>(() => { _ = runner.RunAsync(TestModels.Input(1, seed: 3), 1); });
    }

    private static bool IsDisposed(ModelRunner runner)
    {
        try
        {
            _ = runner.RunAsync([], 1);
            return false;
        }
        catch (ObjectDisposedException)
        {
            return true;
        }
        catch (ArgumentException)
        {
            return false; // still open: the empty input was refused
        }
    }

    /// <summary>A fixed, image-like batch: smooth gradients in the normalised range, as preprocessing produces.</summary>
    private static float[] ImageLikeInput(int inputLength, int batch)
    {
        var input = new float[batch * inputLength];
        var side = (int)Math.Sqrt(inputLength / 3);
        for (var i = 0; i < input.Length; i++)
        {
            var pixel = i % (side * side);
            var (y, x) = (pixel / side, pixel % side);
            input[i] = (float)(Math.Sin(x * 0.05 + i / inputLength) * Math.Cos(y * 0.03) * 1.5);
        }

        return input;
    }
}

/// <summary>Wraps a network to record, from inside forward, what the calling thread's autograd state was.</summary>
internal sealed class ProbeNetwork : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> inner;

    public ProbeNetwork(nn.Module<Tensor, Tensor> inner) : base("Probe")
    {
        this.inner = inner;
        RegisterComponents();
    }

    public record Call(int Batch, string Thread, bool GradEnabled, bool OutputRequiresGrad);

    public ConcurrentQueue<Call> Calls { get; } = new();

    /// <summary>When set, forward signals <see cref="Entered"/> and then waits for the gate.</summary>
    public SemaphoreSlim? Gate { get; init; }

    public SemaphoreSlim Entered { get; } = new(0);

    public override Tensor forward(Tensor input)
    {
        var output = inner.call(input);
        Calls.Enqueue(new Call((int)input.shape[0], Thread.CurrentThread.Name ?? "", is_grad_enabled(), output.requires_grad));
        if (Gate is not null)
        {
            Entered.Release();
            Gate.Wait(TimeSpan.FromSeconds(60));
        }

        return output;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }
}
