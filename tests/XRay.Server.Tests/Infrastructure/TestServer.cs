using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Server.Hosting;
using XRay.Server.Model;

namespace XRay.Server.Tests.Infrastructure;

/// <summary>The real server on a real Kestrel on 127.0.0.1 (ephemeral ports), in this process.</summary>
internal sealed class TestServer : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private int _disposed;

    private TestServer(WebApplication app, string address)
    {
        App = app;
        Address = address;
        Client = new XRayClassifierClient(address, new XRayClientOptions { MaxAttempts = 1, Timeout = Timeout });
        Channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { MaxReceiveMessageSize = null, MaxSendMessageSize = null });
    }

    public WebApplication App { get; }
    public string Address { get; }
    public XRayClassifierClient Client { get; }
    public GrpcChannel Channel { get; }
    public Classifier.ClassifierClient Stub => Client.Classifier;
    public ModelHost Host => App.Services.GetRequiredService<ModelHost>();

    /// <summary>The HTTP/1.1 Metrics endpoint (<c>/metrics</c>, <c>/healthz</c>, <c>/readyz</c>), e.g. http://127.0.0.1:43121.</summary>
    public string MetricsAddress { get; private set; } = "";

    /// <summary>The Admin endpoint (xray.v1.ModelAdmin), when the test configured one (<see cref="AdminEndpointSetting"/>).</summary>
    public string? AdminAddress { get; private set; }

    /// <summary>A setting that opens the Admin endpoint on an ephemeral loopback port.</summary>
    public const string AdminEndpointSetting = "--Kestrel:Endpoints:Admin:Url=http://127.0.0.1:0";

    /// <summary>Starts the server; with a backend factory the model is that fake, else the real default model.</summary>
    public static Task<TestServer> StartAsync(IModelBackendFactory? factory = null, bool waitUntilServing = true, params string[] settings) =>
        StartAsync(factory, configure: null, waitUntilServing, settings);

    /// <summary>As above; <paramref name="configure"/> runs after the test defaults (e.g. to capture logs or spans).</summary>
    public static async Task<TestServer> StartAsync(IModelBackendFactory? factory, Action<WebApplicationBuilder>? configure,
                                                   bool waitUntilServing = true, params string[] settings)
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
            if (factory is not null)
            {
                builder.Services.Replace(ServiceDescriptor.Singleton(factory));
            }
            configure?.Invoke(builder);
        });
        await app.StartAsync().WaitAsync(Timeout);

        // Kestrel binds configured endpoints in key order: Admin (when configured), Grpc, Metrics.
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.ToArray();
        bool admin = settings.Contains(AdminEndpointSetting);
        Assert.Equal(admin ? 3 : 2, addresses.Length);
        var server = new TestServer(app, addresses[^2]) { MetricsAddress = addresses[^1], AdminAddress = admin ? addresses[0] : null };
        if (waitUntilServing)
        {
            await server.WaitForHealthAsync(HealthCheckResponse.Types.ServingStatus.Serving);
        }
        return server;
    }

    /// <summary>Follows gRPC health Watch until the status is reached (bounded).</summary>
    public async Task WaitForHealthAsync(HealthCheckResponse.Types.ServingStatus wanted)
    {
        using HealthWatch watch = WatchHealth();
        await watch.UntilAsync(wanted);
    }

    /// <summary>Opens a health Watch stream now: it stays open while the server shuts down and stops listening.</summary>
    public HealthWatch WatchHealth() => new(Client.Health);

    public sealed class HealthWatch : IDisposable
    {
        private readonly CancellationTokenSource _cts = new(Timeout);
        private readonly AsyncServerStreamingCall<HealthCheckResponse> _call;

        public HealthWatch(Health.HealthClient health)
        {
            _call = health.Watch(new HealthCheckRequest(), cancellationToken: _cts.Token);
        }

        public async Task UntilAsync(HealthCheckResponse.Types.ServingStatus wanted)
        {
            while (await _call.ResponseStream.MoveNext(_cts.Token))
            {
                if (_call.ResponseStream.Current.Status == wanted) return;
            }
            throw new InvalidOperationException($"health stream ended before {wanted}");
        }

        public void Dispose()
        {
            _call.Dispose();
            _cts.Dispose();
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Idempotent: a test may stop a server early and still hold it in an `await using`.
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        Client.Dispose();
        Channel.Dispose();
        // Bounded: a test that fails while holding the fake model must fail, not hang the run.
        await App.StopAsync().WaitAsync(Timeout);
        await App.DisposeAsync().AsTask().WaitAsync(Timeout);
    }
}
