using System.Diagnostics;
using Xunit.Abstractions;

namespace XRay.Model.Tests;

/// <summary>Runs only when XRAY_BENCHMARK=1, e.g. with jemalloc:
/// <c>XRAY_BENCHMARK=1 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
/// dotnet test tests/XRay.Model.Tests --filter RunnerBenchmark --logger "console;verbosity=detailed"</c>.</summary>
public sealed class BenchmarkFactAttribute : FactAttribute
{
    public BenchmarkFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("XRAY_BENCHMARK") != "1")
        {
            Skip = "Benchmark: set XRAY_BENCHMARK=1 to run.";
        }
    }
}

[Collection(nameof(TensorCountCollection))] // alone, so other tests do not share the cores
public class RunnerBenchmark(ITestOutputHelper output)
{
    [BenchmarkFact]
    public async Task ImagesPerSecond()
    {
        output.WriteLine($"torch threads {TorchSharp.torch.get_num_threads()}, LD_PRELOAD={Environment.GetEnvironmentVariable("LD_PRELOAD")}");
        // The first seconds of a process run several times slower (JIT tiering, allocator and thread-pool start-up):
        // burn them before timing anything.
        using (var warm = TestModels.Seeded("small_cnn"))
        using (var warmRunner = new ModelRunner(warm, new RunnerOptions { Device = "cpu" }))
        {
            await RunFor(warmRunner, TestModels.Input(8, seed: 0), 8, TimeSpan.FromSeconds(8));
        }

        foreach (var architecture in (Environment.GetEnvironmentVariable("XRAY_BENCHMARK_ARCHS") ?? "small_cnn,resnet18,densenet121").Split(','))
        {
            foreach (var precision in new[] { "fp32", "bf16" })
            {
                using var model = TestModels.Seeded(architecture);
                using var runner = new ModelRunner(model, new RunnerOptions { Device = "cpu", Precision = precision });
                foreach (var batch in new[] { 1, 8 })
                {
                    var input = TestModels.Input(batch, seed: batch);
                    await runner.WarmUpAsync([batch]);
                    // Untimed runs first: allocator pages, JIT tiering and oneDNN caches settle over the first second or so.
                    await RunFor(runner, input, batch, TimeSpan.FromSeconds(2));
                    var watch = Stopwatch.StartNew();
                    var images = await RunFor(runner, input, batch, TimeSpan.FromSeconds(architecture == "densenet121" ? 6 : 3));

                    output.WriteLine($"{architecture,-12} {precision} batch {batch}: {images / watch.Elapsed.TotalSeconds,8:F1} images/s");
                }
            }
        }
    }

    [BenchmarkFact]
    public void DecodesPerSecond()
    {
        var path = SharedData.NihSample;
        var png = path is null ? TestImages.GrayPng(TestImages.Pattern(1024, 1024)) : File.ReadAllBytes(path);
        var preprocessor = new ImagePreprocessor(new PreprocessingSpec());
        var destination = new float[preprocessor.OutputLength];
        for (var i = 0; i < 5; i++)
        {
            preprocessor.Decode(png, destination);
        }

        var count = 0;
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(3))
        {
            preprocessor.Decode(png, destination);
            count++;
        }

        output.WriteLine($"Decode {(path is null ? "synthetic 1024 x 1024 gray PNG" : Path.GetFileName(path))}: {count / watch.Elapsed.TotalSeconds:F1} images/s on one thread");
    }

    private static async Task<int> RunFor(ModelRunner runner, float[] input, int batch, TimeSpan duration)
    {
        var images = 0;
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < duration)
        {
            await runner.RunAsync(input, batch);
            images += batch;
        }

        return images;
    }
}
