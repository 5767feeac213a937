using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using XRay.Contracts.V1;

namespace XRay.Client;

/// <summary>
/// Typed calls to an XRay Serving server over the generated stubs: every call has a deadline, and
/// UNAVAILABLE/RESOURCE_EXHAUSTED are retried with backoff by gRPC's own retry policy. Given several
/// addresses, or a <c>dns:///</c> name that resolves to several (a Kubernetes headless Service), calls are spread
/// over them round-robin (gRPC client-side load balancing: a static or DNS resolver and the <c>round_robin</c>
/// policy, which skips servers it cannot connect to); a retried call goes to the next server, so a replica that
/// is shutting down (UNAVAILABLE) or gone costs a retry, not a failed call.
/// </summary>
public sealed class XRayClassifierClient : IDisposable
{
    private readonly GrpcChannel _channel;
    private readonly XRayClientOptions _options;

    /// <param name="address">The server: <c>host:port</c>, <c>http://host:port</c>, <c>https://host:port</c> or <c>dns:///host:port</c> (<see cref="ServerAddress"/>).</param>
    public XRayClassifierClient(string address, XRayClientOptions? options = null)
        : this([address], options)
    {
    }

    /// <param name="addresses">
    /// One or more servers, <c>host:port</c> or <c>http://host:port</c>, all with the same scheme, or one <c>dns:///host:port</c> whose
    /// every address is a server. With more than one server, each call goes to the next ready one in turn; a retried
    /// call goes to another.
    /// </param>
    /// <exception cref="ArgumentException">No address, addresses with different schemes, or a dns: address among others.</exception>
    /// <exception cref="FormatException">An address is not one of the forms <see cref="ServerAddress"/> takes.</exception>
    public XRayClassifierClient(IReadOnlyList<string> addresses, XRayClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(addresses);
        if (addresses.Count == 0) throw new ArgumentException("At least one server address is needed.", nameof(addresses));
        _options = options ?? new XRayClientOptions();
        Uri[] uris = addresses.Select(ServerAddress.Parse).ToArray();
        if (uris.Select(uri => uri.Scheme).Distinct().Count() > 1)
        {
            throw new ArgumentException($"All addresses must use the same scheme: {string.Join(", ", addresses)}.", nameof(addresses));
        }
        bool dns = uris[0].Scheme == "dns";
        if (dns && uris.Length > 1)
        {
            throw new ArgumentException($"Give one dns:/// name (it resolves to every server), not several: {string.Join(", ", addresses)}.", nameof(addresses));
        }

        var channelOptions = new GrpcChannelOptions
        {
            MaxReceiveMessageSize = _options.MaxMessageBytes,
            MaxSendMessageSize = _options.MaxMessageBytes,
            ServiceConfig = ServiceConfig(_options.MaxAttempts, roundRobin: uris.Length > 1 || dns),
            // Retries buffer the request; a 32-image float batch is ~19 MB.
            MaxRetryBufferPerCallSize = _options.MaxMessageBytes,
        };
        bool https = dns ? _options.UseTls : uris[0].Scheme == Uri.UriSchemeHttps;
        if (dns)
        {
            channelOptions.ServiceProvider = new BalancerServices(new DnsResolverFactory(_options.DnsRefreshInterval));
            channelOptions.Credentials = https ? ChannelCredentials.SecureSsl : ChannelCredentials.Insecure;
        }
        else if (uris.Length > 1)
        {
            // "static:///" names no real host: the resolver hands the balancer the fixed list of servers.
            var resolver = new StaticResolverFactory(_ => uris.Select(uri => new BalancerAddress(uri.Host, uri.Port)).ToArray());
            channelOptions.ServiceProvider = new BalancerServices(resolver);
            channelOptions.Credentials = https ? ChannelCredentials.SecureSsl : ChannelCredentials.Insecure;
        }
        ClientSecurity.Apply(channelOptions, _options, https);
        _channel = dns || uris.Length == 1
            ? GrpcChannel.ForAddress(uris[0], channelOptions)
            : GrpcChannel.ForAddress("static:///xray", channelOptions);
        Addresses = Array.AsReadOnly(uris.Select(uri => uri.ToString().TrimEnd('/')).ToArray());
        Classifier = new Classifier.ClassifierClient(_channel);
        Health = new Health.HealthClient(_channel);
    }

    /// <summary>The servers this client calls.</summary>
    public IReadOnlyList<string> Addresses { get; }

    /// <summary>The generated stub, for calls this class does not wrap.</summary>
    public Classifier.ClassifierClient Classifier { get; }

    public Health.HealthClient Health { get; }

    public Task<ClassifyResponse> ClassifyFilesAsync(IEnumerable<string> paths, CancellationToken cancellationToken = default) =>
        ClassifyEncodedAsync(paths.Select(path => (ReadOnlyMemory<byte>)File.ReadAllBytes(path)), cancellationToken);

    /// <summary>PNG or JPEG bytes, one image each; the server decodes and preprocesses them.</summary>
    public Task<ClassifyResponse> ClassifyEncodedAsync(IEnumerable<ReadOnlyMemory<byte>> images, CancellationToken cancellationToken = default)
    {
        var encoded = new EncodedImages();
        foreach (ReadOnlyMemory<byte> image in images)
        {
            encoded.Images.Add(UnsafeByteOperations.UnsafeWrap(image));
        }
        return ClassifyAsync(new ClassifyRequest { Encoded = encoded }, cancellationToken);
    }

    /// <summary>Normalised float32 pixels, shape [C,H,W] or [N,C,H,W].</summary>
    public Task<ClassifyResponse> ClassifyTensorAsync(ReadOnlySpan<float> data, long[] shape, CancellationToken cancellationToken = default) =>
        ClassifyAsync(new ClassifyRequest { Tensor = Tensors.Float32(data, shape) }, cancellationToken);

    /// <summary>0..255 pixels, shape [C,H,W] or [N,C,H,W]; the server normalises them.</summary>
    public Task<ClassifyResponse> ClassifyTensorAsync(ReadOnlySpan<byte> data, long[] shape, CancellationToken cancellationToken = default) =>
        ClassifyAsync(new ClassifyRequest { Tensor = Tensors.UInt8(data, shape) }, cancellationToken);

    public async Task<ClassifyResponse> ClassifyAsync(ClassifyRequest request, CancellationToken cancellationToken = default) =>
        await Classifier.ClassifyAsync(request, CallOptions(cancellationToken)).ConfigureAwait(false);

    public async Task<ModelInfo> GetModelInfoAsync(CancellationToken cancellationToken = default) =>
        await Classifier.GetModelInfoAsync(new GetModelInfoRequest(), CallOptions(cancellationToken)).ConfigureAwait(false);

    /// <summary>The server's gRPC health: SERVING once the model is loaded and warmed up.</summary>
    public async Task<HealthCheckResponse.Types.ServingStatus> CheckHealthAsync(string service = "", CancellationToken cancellationToken = default)
    {
        HealthCheckResponse response = await Health.CheckAsync(new HealthCheckRequest { Service = service }, CallOptions(cancellationToken)).ConfigureAwait(false);
        return response.Status;
    }

    /// <summary>Opens a ClassifyStream call on which many requests can be in flight at once.</summary>
    public ClassifyStreamSession OpenStream(TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
        new(Classifier.ClassifyStream(new CallOptions(
            deadline: timeout is { } t ? DateTime.UtcNow + t : null,
            cancellationToken: cancellationToken)));

    private CallOptions CallOptions(CancellationToken cancellationToken) =>
        new(deadline: DateTime.UtcNow + _options.Timeout, cancellationToken: cancellationToken);

    private static ServiceConfig? ServiceConfig(int maxAttempts, bool roundRobin)
    {
        if (maxAttempts <= 1 && !roundRobin) return null;
        var config = new ServiceConfig();
        if (roundRobin) config.LoadBalancingConfigs.Add(new RoundRobinConfig());
        if (maxAttempts > 1)
        {
            config.MethodConfigs.Add(new MethodConfig
            {
                Names = { MethodName.Default },
                RetryPolicy = new RetryPolicy
                {
                    MaxAttempts = maxAttempts,
                    InitialBackoff = TimeSpan.FromMilliseconds(100),
                    MaxBackoff = TimeSpan.FromSeconds(2),
                    BackoffMultiplier = 2,
                    RetryableStatusCodes = { StatusCode.Unavailable, StatusCode.ResourceExhausted },
                },
            });
        }
        return config;
    }

    public void Dispose() => _channel.Dispose();

    /// <summary>
    /// What GrpcChannel looks up in <see cref="GrpcChannelOptions.ServiceProvider"/>: only the resolver for
    /// "static" or "dns"; everything else falls back to the channel's defaults. Saves a dependency-injection container.
    /// </summary>
    private sealed class BalancerServices(ResolverFactory resolver) : IServiceProvider
    {
        public object? GetService(Type serviceType) =>
            serviceType == typeof(IEnumerable<ResolverFactory>) ? new[] { resolver }
            : serviceType == typeof(ResolverFactory) ? resolver
            : null;
    }
}
