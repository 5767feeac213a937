using Grpc.Health.V1;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using XRay.Client;
using XRay.Model;
using XRay.Server.Hosting;
using XRay.Server.Model;

namespace XRay.LoadTest.Tests;

/// <summary>The real server, in this process, on 127.0.0.1 with ephemeral ports; the real default model unless a backend is given.</summary>
internal sealed class LoopbackServer : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private readonly WebApplication _app;

    private LoopbackServer(WebApplication app, string address)
    {
        _app = app;
        Address = address;
    }

    public string Address { get; }

    public static async Task<LoopbackServer> StartAsync(IModelBackend? backend = null, params string[] settings)
    {
        string[] args =
        [
            "--Kestrel:Endpoints:Grpc:Url=http://127.0.0.1:0",
            "--Kestrel:Endpoints:Metrics:Url=http://127.0.0.1:0",
            "--Model:Warmup=none",
            "--Model:Device=cpu",
            .. settings,
        ];
        WebApplication app = XRayServerApp.Build(args, builder =>
        {
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            if (backend is not null)
            {
                builder.Services.Replace(ServiceDescriptor.Singleton<IModelBackendFactory>(new FixedBackendFactory(backend)));
            }
        });
        await app.StartAsync().WaitAsync(Timeout);
        // Kestrel binds configured endpoints in key order: Grpc before Metrics.
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        var server = new LoopbackServer(app, address);
        using var client = new XRayClassifierClient(address, new XRayClientOptions { MaxAttempts = 1, Timeout = Timeout });
        using var cts = new CancellationTokenSource(Timeout);
        using var watch = client.Health.Watch(new HealthCheckRequest(), cancellationToken: cts.Token);
        while (await watch.ResponseStream.MoveNext(cts.Token))
        {
            if (watch.ResponseStream.Current.Status == HealthCheckResponse.Types.ServingStatus.Serving) return server;
        }
        throw new InvalidOperationException("the server never reported SERVING");
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().WaitAsync(Timeout);
        await _app.DisposeAsync();
    }

    private sealed class FixedBackendFactory(IModelBackend backend) : IModelBackendFactory
    {
        public IModelBackend Create(ModelOptions options, int modelInstances) => backend;
    }
}

/// <summary>A model that answers at once with zero logits and counts the images it saw: tells which server got a call.</summary>
internal sealed class CountingBackend : IModelBackend
{
    private int _images;

    public ModelManifest Manifest { get; } = new()
    {
        Name = "counting",
        Version = "1.0.0",
        Architecture = Architectures.SmallCnn,
        ClassNames = ChestXrayFindings.Nih14,
    };

    public string Device => "cpu";
    public string Precision => "fp32";
    public int Images => Volatile.Read(ref _images);

    public Task<float[]> RunAsync(float[] input, int batchSize, CancellationToken cancellationToken)
    {
        Interlocked.Add(ref _images, batchSize);
        return Task.FromResult(new float[batchSize * Manifest.ClassNames.Count]);
    }

    public Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken) => Task.CompletedTask;

    public void Dispose()
    {
    }
}
