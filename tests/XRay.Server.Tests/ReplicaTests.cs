using Grpc.Core;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Model;
using XRay.Server.Tests.Infrastructure;
using Xunit.Abstractions;

namespace XRay.Server.Tests;

/// <summary>
/// Several replicas behind the C# client's round-robin balancing: three server processes (a small CNN, so that
/// the load is about balancing, not compute) share the load fairly, and one stopped with SIGTERM in the middle of
/// the load costs no failed request: its in-flight work drains, new work goes to the others.
/// </summary>
[Collection(nameof(ServerProcessCollection))]
public sealed class ReplicaTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string ImagesClassified = "xray_server_images_classified_total";
    private const int Concurrency = 6;
    private readonly string _model = Directory.CreateTempSubdirectory("xray-replica-model-").FullName;
    private readonly List<ServerProcess> _replicas = [];

    public async Task InitializeAsync()
    {
        var manifest = new ModelManifest
        {
            Name = "replica-test",
            Version = "1.0.0",
            Architecture = Architectures.SmallCnn,
            ClassNames = ChestXrayFindings.Nih14.ToArray(),
            Preprocessing = Architectures.DefaultPreprocessing(Architectures.SmallCnn),
        };
        TorchSharp.torch.manual_seed(7);
        using (var network = Architectures.Create(Architectures.SmallCnn, manifest.ClassNames.Count))
        {
            Checkpoint.Save(_model, manifest, network);
        }
        for (int i = 0; i < 3; i++)
        {
            _replicas.Add(ServerProcess.Start(["--model", _model, "--warmup", "none", "--max-batch-size", "8"]));
        }
        await Task.WhenAll(_replicas.Select(replica => replica.WaitUntilServingAsync()));
    }

    public Task DisposeAsync()
    {
        foreach (ServerProcess replica in _replicas) replica.Dispose();
        Directory.Delete(_model, recursive: true);
        return Task.CompletedTask;
    }

    [Fact]
    public async Task RoundRobin_SharesLoadFairly_AndAReplicaStoppedMidRunFailsNoRequest()
    {
        using var client = new XRayClassifierClient(_replicas.Select(replica => replica.Address).ToArray(),
            new XRayClientOptions { MaxAttempts = 5, Timeout = TimeSpan.FromSeconds(30) });
        byte[] image = Images.RandomPixels(224 * 224, seed: 3);
        var failures = new List<RpcException>();
        int sent = 0;

        async Task<bool> ClassifyAsync()
        {
            Interlocked.Increment(ref sent);
            try
            {
                ClassifyResponse response = await client.ClassifyTensorAsync(image, [1, 224, 224]).WaitAsync(TestServer.Timeout);
                Assert.Equal(14, response.Predictions[0].Probabilities.Count);
                return true;
            }
            catch (RpcException ex)
            {
                lock (failures) failures.Add(ex);
                return false;
            }
        }

        // Until every replica is connected, round robin only knows the ready ones: let it settle first.
        await RunLoadAsync(ClassifyAsync, completed => completed < 30);
        double[] before = await ReadAsync(ImagesClassified, _replicas);
        await RunLoadAsync(ClassifyAsync, completed => completed < 150);
        double[] after = await ReadAsync(ImagesClassified, _replicas);
        double[] served = after.Zip(before, (a, b) => a - b).ToArray();
        double[] shares = served.Select(count => count / served.Sum()).ToArray();
        output.WriteLine($"shares over {served.Sum()} requests: {string.Join(", ", shares.Select(s => s.ToString("P1")))}");
        Assert.All(shares, share => Assert.InRange(share, 0.25, 0.42));

        // SIGTERM one replica while requests are in flight; keep the load going until it has exited and 60 more
        // requests completed, all of which the other two must have served (but for responses already on their way
        // when it exited, at most one per caller).
        ServerProcess stopped = _replicas[0];
        ServerProcess[] survivors = [_replicas[1], _replicas[2]];
        double[] survivorsBefore = await ReadAsync(ImagesClassified, survivors);
        int completedAtExit = -1, phaseCompleted = 0;
        await RunLoadAsync(async () =>
        {
            bool ok = await ClassifyAsync();
            int completed = Interlocked.Increment(ref phaseCompleted);
            if (completed == 20) stopped.Terminate();
            if (completedAtExit < 0 && stopped.HasExited) Interlocked.CompareExchange(ref completedAtExit, completed, -1);
            return ok;
        }, _ => completedAtExit < 0 || phaseCompleted < completedAtExit + 60);
        await stopped.WaitForExitAsync();
        double servedBySurvivors = (await ReadAsync(ImagesClassified, survivors)).Sum() - survivorsBefore.Sum();
        output.WriteLine($"after SIGTERM: {phaseCompleted} requests, replica exited after {completedAtExit}; " +
                         $"survivors served {servedBySurvivors}; {sent} sent in all, {failures.Count} failed");

        Assert.Empty(failures);
        Assert.Equal(0, stopped.ExitCode);
        Assert.Contains("Shutting down: no new requests", stopped.Output);
        Assert.InRange(servedBySurvivors, phaseCompleted - completedAtExit - Concurrency, phaseCompleted);
    }

    /// <summary>Closed-loop load: <see cref="Concurrency"/> callers, each sending while <paramref name="keepGoing"/> holds.</summary>
    private static Task RunLoadAsync(Func<Task<bool>> request, Func<int, bool> keepGoing)
    {
        int completed = 0;
        return Task.WhenAll(Enumerable.Range(0, Concurrency).Select(async _ =>
        {
            while (keepGoing(Volatile.Read(ref completed)))
            {
                await request();
                Interlocked.Increment(ref completed);
            }
        })).WaitAsync(TimeSpan.FromMinutes(5));
    }

    private static async Task<double[]> ReadAsync(string metric, IEnumerable<ServerProcess> replicas) =>
        await Task.WhenAll(replicas.Select(replica => replica.ReadMetricAsync(metric)));
}
