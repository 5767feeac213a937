using Grpc.Core;
using Grpc.Net.Client;
using XRay.Contracts.V1;
using XRay.Model;
using XRay.Server.Model;
using XRay.Server.Tests.Infrastructure;
using Xunit.Abstractions;

namespace XRay.Server.Tests;

/// <summary>
/// Models swapped while serving through xray.v1.ModelAdmin on the Admin endpoint: real checkpoints under load with
/// no failed request (and no client retries), queued work finishing on the old model, a failed load leaving the
/// old model serving, and the admin service reachable on the Admin endpoint only.
/// </summary>
public sealed class ModelSwapTests(ITestOutputHelper output)
{
    [Fact]
    public async Task LoadModel_UnderLoad_SwapsCheckpointsWithoutAFailedRequest()
    {
        string root = Directory.CreateTempSubdirectory("xray-swap-").FullName;
        try
        {
            string v1 = SaveSmallCnn(Path.Combine(root, "v1"), "swap-test", "1.0.0", seed: 1);
            string v2 = SaveSmallCnn(Path.Combine(root, "v2"), "swap-test", "2.0.0", seed: 2);
            await using var server = await TestServer.StartAsync(null, waitUntilServing: true,
                $"--Model:Path={v1}", "--Model:Warmup=powers-of-two", "--Batching:MaxBatchSize=8", TestServer.AdminEndpointSetting);
            using var adminChannel = GrpcChannel.ForAddress(server.AdminAddress!);
            var admin = new ModelAdmin.ModelAdminClient(adminChannel);

            // Closed-loop load from 6 callers without retries, running through the swap and 100 requests past it.
            var versions = new List<(string Version, bool StartedAfterSwap)>();
            int completed = 0, failed = 0, afterSwap = -1;
            bool swapped = false;
            async Task CallerAsync(int caller)
            {
                for (int i = 0; afterSwap < 0 || Volatile.Read(ref completed) < afterSwap + 100; i++)
                {
                    bool startedAfterSwap = Volatile.Read(ref swapped);
                    try
                    {
                        ClassifyResponse response = await server.Stub.ClassifyAsync(Traffic.Request(caller * 10_000 + i));
                        lock (versions) versions.Add((response.ModelVersion, startedAfterSwap));
                    }
                    catch (RpcException ex)
                    {
                        output.WriteLine($"failed: {ex.Status}");
                        Interlocked.Increment(ref failed);
                    }
                    Interlocked.Increment(ref completed);
                }
            }
            Task load = Task.WhenAll(Enumerable.Range(0, 6).Select(CallerAsync));
            await Traffic.WaitUntilAsync(() => Volatile.Read(ref completed) >= 50, "50 requests completed");

            LoadModelResponse swap = await admin.LoadModelAsync(new LoadModelRequest { Path = v2 }).ResponseAsync.WaitAsync(TestServer.Timeout);
            Volatile.Write(ref swapped, true);
            Volatile.Write(ref afterSwap, Volatile.Read(ref completed));
            await load.WaitAsync(TestServer.Timeout);

            output.WriteLine($"{versions.Count + failed} requests, {failed} failed; " +
                             $"v1 {versions.Count(v => v.Version == "1.0.0")}, v2 {versions.Count(v => v.Version == "2.0.0")}; load {swap.LoadSeconds:F2} s");
            Assert.Equal(0, failed);
            Assert.Equal(("2.0.0", "1.0.0"), (swap.Model.Version, swap.PreviousVersion));
            Assert.Contains(versions, v => v.Version == "1.0.0");
            Assert.All(versions.Where(v => v.StartedAfterSwap), v => Assert.Equal("2.0.0", v.Version));
            Assert.Equal("2.0.0", (await server.Client.GetModelInfoAsync().WaitAsync(TestServer.Timeout)).Version);
            string metrics = await new HttpClient().GetStringAsync($"{server.MetricsAddress}/metrics").WaitAsync(TestServer.Timeout);
            string[] info = metrics.Split('\n').Where(line => line.StartsWith("xray_server_model_info{", StringComparison.Ordinal)).ToArray();
            // 1 for the model served, 0 for the one it replaced.
            Assert.Contains(info, line => line.Contains("xray_model_version=\"2.0.0\"") && line.Contains("xray_model_name=\"swap-test\"") && line.Split(' ')[1] == "1");
            Assert.Contains(info, line => line.Contains("xray_model_version=\"1.0.0\"") && line.Split(' ')[1] == "0");
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public async Task LoadModel_WhileABatchRuns_LetsQueuedRequestsFinishOnTheOldModel_AndSendsNewOnesToTheNew()
    {
        var old = new FakeModelBackend(name: "old", version: "1");
        var replacement = new FakeModelBackend(name: "new", version: "2", logitOffset: 5);
        var catalog = new FakeModelCatalog(new Dictionary<string, IModelBackend> { [""] = old, ["new"] = replacement });
        await using var server = await TestServer.StartAsync(catalog, waitUntilServing: true, TestServer.AdminEndpointSetting);
        using var adminChannel = GrpcChannel.ForAddress(server.AdminAddress!);
        var admin = new ModelAdmin.ModelAdminClient(adminChannel);

        ClassifyResponse onOld, onNew;
        using (Traffic.Held(old))
        {
            Task<int> running = Traffic.NextBatchStarted(old);
            Task<ClassifyResponse> first = server.Stub.ClassifyAsync(Traffic.Request(1)).ResponseAsync;
            await running.WaitAsync(TestServer.Timeout);
            Task<ClassifyResponse> queued = server.Stub.ClassifyAsync(Traffic.Request(2)).ResponseAsync;
            await Traffic.QueuedImagesBecome(server, 1);

            await admin.LoadModelAsync(new LoadModelRequest { Path = "new" }).ResponseAsync.WaitAsync(TestServer.Timeout);
            onNew = await server.Stub.ClassifyAsync(Traffic.Request(3)).ResponseAsync.WaitAsync(TestServer.Timeout);
            Assert.False(first.IsCompleted || queued.IsCompleted);
            old.Release();
            onOld = await queued.WaitAsync(TestServer.Timeout);
            Assert.Equal("old", (await first.WaitAsync(TestServer.Timeout)).ModelName);
        }

        Assert.Equal(("old", "new"), (onOld.ModelName, onNew.ModelName));
        // The queued request ran on the old model: the new one answers the same image 5 higher on every logit.
        ClassifyResponse again = await server.Stub.ClassifyAsync(Traffic.Request(2)).ResponseAsync.WaitAsync(TestServer.Timeout);
        Assert.Equal("new", again.ModelName);
        Assert.All(again.Predictions[0].Logits.Zip(onOld.Predictions[0].Logits), pair => Assert.Equal(pair.First - 5, pair.Second, 1e-4f));
        await old.Disposed.WaitAsync(TestServer.Timeout);
        Assert.False(replacement.Disposed.IsCompleted);
    }

    [Fact]
    public async Task LoadModel_ThatFailsToLoad_LeavesTheOldModelServing_AndSaysWhy()
    {
        var served = new FakeModelBackend(name: "served", version: "1");
        var catalog = new FakeModelCatalog(new Dictionary<string, IModelBackend> { [""] = served });
        await using var server = await TestServer.StartAsync(catalog, waitUntilServing: true, TestServer.AdminEndpointSetting);
        using var adminChannel = GrpcChannel.ForAddress(server.AdminAddress!);
        var admin = new ModelAdmin.ModelAdminClient(adminChannel);

        var error = await Assert.ThrowsAsync<RpcException>(
            () => admin.LoadModelAsync(new LoadModelRequest { Path = "/models/missing" }).ResponseAsync.WaitAsync(TestServer.Timeout));

        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Contains("manifest.json not found", error.Status.Detail);
        Assert.Contains("/models/missing", error.Status.Detail);
        ClassifyResponse response = await server.Stub.ClassifyAsync(Traffic.Request(1)).ResponseAsync.WaitAsync(TestServer.Timeout);
        Assert.Equal("served", response.ModelName);
        Assert.Equal("served", (await server.Client.GetModelInfoAsync().WaitAsync(TestServer.Timeout)).Name);
        Assert.False(served.Disposed.IsCompleted);
    }

    [Fact]
    public async Task ModelAdmin_IsServedOnTheAdminEndpointOnly()
    {
        await using var withAdmin = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()), waitUntilServing: true,
            TestServer.AdminEndpointSetting);
        using var adminChannel = GrpcChannel.ForAddress(withAdmin.AdminAddress!);

        var onGrpcEndpoint = new ModelAdmin.ModelAdminClient(withAdmin.Channel).LoadModelAsync(new LoadModelRequest { Path = "x" }).ResponseAsync;
        var classifyOnAdmin = new Classifier.ClassifierClient(adminChannel).ClassifyAsync(Traffic.Request(1)).ResponseAsync;

        Assert.Equal(StatusCode.Unimplemented, await Traffic.StatusOf(onGrpcEndpoint));
        Assert.Equal(StatusCode.Unimplemented, await Traffic.StatusOf(classifyOnAdmin));
    }

    private static string SaveSmallCnn(string directory, string name, string version, int seed)
    {
        var manifest = new ModelManifest
        {
            Name = name,
            Version = version,
            Architecture = Architectures.SmallCnn,
            ClassNames = ChestXrayFindings.Nih14.ToArray(),
            Preprocessing = Architectures.DefaultPreprocessing(Architectures.SmallCnn),
        };
        TorchSharp.torch.manual_seed(seed);
        using var network = Architectures.Create(Architectures.SmallCnn, manifest.ClassNames.Count);
        Checkpoint.Save(directory, manifest, network);
        return directory;
    }
}
