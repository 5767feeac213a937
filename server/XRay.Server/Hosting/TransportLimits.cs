using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.AspNetCore.Server.Model;
using Grpc.HealthCheck;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using XRay.Server.Grpc;

namespace XRay.Server.Hosting;

/// <summary>
/// The transport bounds in one place: one maximum message size for Kestrel and gRPC, unary and streaming alike; a
/// minimum upload rate and a per-message read timeout; a per-connection share of the queue; streams closed on shutdown.
/// </summary>
public static class TransportLimits
{
    public static IServiceCollection AddXrayTransportLimits(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<TransportOptions>().Bind(configuration.GetSection(TransportOptions.SectionName))
            .ValidateDataAnnotations().ValidateOnStart();

        services.AddOptions<KestrelServerOptions>().Configure<IOptions<ServingOptions>, IOptions<TransportOptions>>((kestrel, serving, transport) =>
        {
            // A unary body is one message and its 5-byte prefix; grpc-dotnet lifts this limit for streams, where the
            // frame guard applies the same per-message limit.
            kestrel.Limits.MaxRequestBodySize = serving.Value.MaxReceiveMessageBytes + GrpcFrameGuard.PrefixLength;
            int rate = transport.Value.MinRequestBodyBytesPerSecond;
            kestrel.Limits.MinRequestBodyDataRate = rate == 0 ? null : new MinDataRate(rate, TimeSpan.FromSeconds(5));
        });

        services.TryAddSingleton<ConnectionAdmission>();
        services.TryAddSingleton<HeaderAdmission>();
        // Refusal log lines: at most this many a second, shared by every kind of refusal; the metrics count them all.
        services.TryAddSingleton(provider => new LogBudget(10, provider.GetRequiredService<TimeProvider>()));
        services.TryAddSingleton<MalformedCallLog>();
        services.TryAddScoped<ClassifierService>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IServiceMethodProvider<ClassifierEndpoint>, ClassifierMethodProvider>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IServiceMethodProvider<InferenceEndpoint>, InferenceMethodProvider>());

        // Registered after the model host, so stopped before it: health already says NOT_SERVING when streams close.
        services.AddSingleton<StreamCloser>();
        services.AddHostedService(provider => provider.GetRequiredService<StreamCloser>());
        services.AddSingleton<ClosingHealthService>();
        services.Replace(ServiceDescriptor.Singleton<HealthServiceImpl>(provider => provider.GetRequiredService<ClosingHealthService>()));
        return services;
    }

    /// <summary>
    /// Refuses unary Classify calls the queue cannot take from their headers, before their message is read
    /// (<see cref="HeaderAdmission"/>). After routing and authorization, before the frame guard.
    /// </summary>
    public static IApplicationBuilder UseHeaderAdmission(this IApplicationBuilder app)
    {
        HeaderAdmission admission = app.ApplicationServices.GetRequiredService<HeaderAdmission>();
        return app.Use((context, next) =>
            admission.TryRefuse(context, context.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>()) ? Task.CompletedTask : next(context));
    }

    /// <summary>Puts a <see cref="GrpcFrameGuard"/> in front of every gRPC call's request body. After routing, before the endpoints.</summary>
    public static IApplicationBuilder UseGrpcFrameGuard(this IApplicationBuilder app)
    {
        MalformedCallLog malformed = app.ApplicationServices.GetRequiredService<MalformedCallLog>();
        var serving = app.ApplicationServices.GetRequiredService<IOptions<ServingOptions>>().Value;
        var transport = app.ApplicationServices.GetRequiredService<IOptions<TransportOptions>>().Value;
        TimeProvider time = app.ApplicationServices.GetRequiredService<TimeProvider>();
        return app.Use((context, next) =>
        {
            if (context.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>() is { } grpc)
            {
                var method = grpc.Method;
                var guard = new GrpcFrameGuard(context.Request.BodyReader, serving.MaxReceiveMessageBytes, transport.MessageReadTimeout,
                    singleMessage: method.Type is MethodType.Unary or MethodType.ServerStreaming, time,
                    (code, detail) => malformed.Write(method.ServiceName, method.Name, code, detail));
                context.Features.Set<IRequestBodyPipeFeature>(new GuardedBody(guard));
            }
            return next(context);
        });
    }

    private sealed class GuardedBody(System.IO.Pipelines.PipeReader reader) : IRequestBodyPipeFeature
    {
        public System.IO.Pipelines.PipeReader Reader => reader;
    }
}
