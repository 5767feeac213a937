using Grpc.HealthCheck;
using Microsoft.Extensions.Options;
using XRay.Batching;
using XRay.Server.Grpc;
using XRay.Server.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Hosting;

public static class ServingExtensions
{
    /// <summary>Command-line shortcuts for the settings users change most.</summary>
    public static readonly IReadOnlyDictionary<string, string> SwitchMappings = new Dictionary<string, string>
    {
        ["--model"] = "Model:Path",
        ["--runtime"] = "Model:Runtime",
        ["--device"] = "Model:Device",
        ["--precision"] = "Model:Precision",
        ["--warmup"] = "Model:Warmup",
        ["--max-batch-size"] = "Batching:MaxBatchSize",
        ["--max-queue-delay-us"] = "Batching:MaxQueueDelayMicroseconds",
        ["--max-queue-size"] = "Batching:MaxQueueSize",
        ["--model-instances"] = "Batching:ModelInstances",
        ["--max-pixels"] = "Decoding:MaxPixels",
        ["--max-concurrent-decodes"] = "Decoding:MaxConcurrentDecodes",
        ["--grpc-url"] = "Kestrel:Endpoints:Grpc:Url",
        ["--metrics-url"] = "Kestrel:Endpoints:Metrics:Url",
        ["--admin-url"] = "Kestrel:Endpoints:Admin:Url",
    };

    public static IServiceCollection AddXrayServing(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<ModelOptions>().Bind(configuration.GetSection(ModelOptions.SectionName))
            .ValidateDataAnnotations()
            .Validate(options => options.RuntimeError() is null, "Model:Runtime onnxruntime runs fp32 only: Model:Precision bf16 needs Model:Runtime torch or auto.")
            .ValidateOnStart();
        services.AddOptions<BatchingOptions>().Bind(configuration.GetSection(BatchingOptions.SectionName))
            .ValidateOnStart();
        services.AddSingleton<IValidateOptions<BatchingOptions>, BatchingOptionsValidator>();
        services.AddOptions<ServingOptions>().Bind(configuration.GetSection(ServingOptions.SectionName))
            .ValidateDataAnnotations().ValidateOnStart();
        services.AddOptions<DecodingOptions>().Bind(configuration.GetSection(DecodingOptions.SectionName))
            .ValidateDataAnnotations().ValidateOnStart();
        services.AddSingleton<DecodePool>();
        services.AddOptions<MemoryOptions>().Bind(configuration.GetSection(MemoryOptions.SectionName))
            .ValidateDataAnnotations().ValidateOnStart();

        services.AddGrpc();
        services.AddOptions<global::Grpc.AspNetCore.Server.GrpcServiceOptions>()
            .Configure<IOptions<ServingOptions>>((grpc, serving) => grpc.MaxReceiveMessageSize = serving.Value.MaxReceiveMessageBytes);
        services.AddGrpcReflection();

        services.AddSingleton(TimeProvider.System);
        services.AddSingleton<HealthServiceImpl>();
        services.AddSingleton<IModelBackendFactory, ModelBackendFactory>();
        services.AddSingleton<ModelHost>();
        services.AddXrayTelemetry(configuration);
        services.AddXrayAdminEndpoint(configuration);
        services.AddHostedService(provider => provider.GetRequiredService<ModelHost>());
        services.AddHostedService<IdleMemoryRelease>();
        return services;
    }

    public static IEndpointRouteBuilder MapXrayServing(this IEndpointRouteBuilder endpoints)
    {
        // The Classifier through its transport bounds and precise marshallers; health stays open for probes.
        var classifier = endpoints.MapGrpcService<ClassifierEndpoint>();
        endpoints.MapGrpcService<HealthServiceImpl>().AllowAnonymous();
        var admin = endpoints.MapGrpcService<ModelAdminService>();
        endpoints.MapXraySecurity(classifier, admin);

        // Plain HTTP probes for orchestrators that do not speak gRPC health (served on the HTTP/1.1 endpoint).
        endpoints.MapGet("/healthz", () => Results.Text("ok"));
        endpoints.MapGet("/readyz", (ModelHost host) =>
            host.Current is null ? Results.Text("model loading", statusCode: 503) : Results.Text("ready"));
        return endpoints;
    }

    /// <summary>Batching options checked once, by their own range check, reporting its message (option, value, range).</summary>
    private sealed class BatchingOptionsValidator : IValidateOptions<BatchingOptions>
    {
        public ValidateOptionsResult Validate(string? name, BatchingOptions options) =>
            options.Problem is { } problem ? ValidateOptionsResult.Fail(problem) : ValidateOptionsResult.Success;
    }
}
