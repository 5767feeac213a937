using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Grpc.Net.Client.Configuration;
using XRay.Contracts.V1;

namespace XRay.Client;

/// <summary>
/// Typed calls to an XRay Serving server over the generated stubs: every call has a deadline, and
/// UNAVAILABLE/RESOURCE_EXHAUSTED are retried with backoff by gRPC's own retry policy.
/// </summary>
public sealed class XRayClassifierClient : IDisposable
{
    private readonly GrpcChannel _channel;
    private readonly XRayClientOptions _options;

    public XRayClassifierClient(string address, XRayClientOptions? options = null)
    {
        _options = options ?? new XRayClientOptions();
        _channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = _options.MaxMessageBytes,
            MaxSendMessageSize = _options.MaxMessageBytes,
            ServiceConfig = _options.MaxAttempts > 1 ? RetryConfig(_options.MaxAttempts) : null,
            // Retries buffer the request; a 32-image float batch is ~19 MB.
            MaxRetryBufferPerCallSize = _options.MaxMessageBytes,
        });
        Classifier = new Classifier.ClassifierClient(_channel);
        Health = new Health.HealthClient(_channel);
    }

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

    private static ServiceConfig RetryConfig(int maxAttempts) => new()
    {
        MethodConfigs =
        {
            new MethodConfig
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
            },
        },
    };

    public void Dispose() => _channel.Dispose();
}
