using System.Reflection;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Server.Kestrel;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace XRay.Server.Telemetry;

public static class TelemetryExtensions
{
    /// <summary>The Kestrel endpoint (<c>Kestrel:Endpoints:Metrics</c>) that serves <c>/metrics</c>; the gRPC endpoint does not.</summary>
    public const string MetricsEndpointName = "Metrics";
    public const string ScrapePath = "/metrics";

    // Set on every connection accepted by the Metrics endpoint, whatever port it was given (tests bind port 0).
    private const string MetricsConnectionItem = "xray.metrics-endpoint";

    /// <summary>
    /// The server's meter, ASP.NET Core, runtime and process metrics for Prometheus; spans for each RPC and batch;
    /// OTLP export of all of it when <see cref="TelemetryOptions.OtlpEndpoint"/> is set.
    /// </summary>
    public static IServiceCollection AddXrayTelemetry(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<TelemetryOptions>().Bind(configuration.GetSection(TelemetryOptions.SectionName))
            .ValidateDataAnnotations().ValidateOnStart();
        // The pipeline is built from the settings now; ValidateOnStart reports bad ones before anything runs.
        TelemetryOptions options = configuration.GetSection(TelemetryOptions.SectionName).Get<TelemetryOptions>() ?? new();

        services.AddSingleton<XRayMetrics>();
        services.Configure<KestrelServerOptions>(kestrel =>
        {
            // Reuses the loader that reads Kestrel:Endpoints (set up by the host defaults) to tag one named endpoint.
            KestrelConfigurationLoader loader = kestrel.ConfigurationLoader ?? kestrel.Configure(configuration.GetSection("Kestrel"));
            loader.Endpoint(MetricsEndpointName, endpoint => endpoint.ListenOptions.Use(next => connection =>
            {
                connection.Items[MetricsConnectionItem] = true;
                return next(connection);
            }));
        });

        OpenTelemetryBuilder telemetry = services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService(options.ServiceName, serviceVersion: ServiceVersion()))
            .WithMetrics(metrics => metrics
                .AddMeter(XRayMetrics.MeterName)
                .AddAspNetCoreInstrumentation()
                .AddRuntimeInstrumentation()
                .AddProcessInstrumentation()
                .AddPrometheusExporter())
            .WithTracing(tracing => tracing
                .SetSampler(new ParentBasedSampler(new TraceIdRatioBasedSampler(Math.Clamp(options.TraceSamplingRatio, 0, 1))))
                .AddSource(XRayTracing.SourceName)
                // Scrapes and probes are not worth a span each.
                .AddAspNetCoreInstrumentation(aspnet => aspnet.Filter = context => !IsMetricsEndpoint(context)));

        if (!string.IsNullOrEmpty(options.OtlpEndpoint) && Uri.TryCreate(options.OtlpEndpoint, UriKind.Absolute, out Uri? endpoint))
        {
            telemetry.UseOtlpExporter(
                options.OtlpProtocol == "http/protobuf" ? OtlpExportProtocol.HttpProtobuf : OtlpExportProtocol.Grpc, endpoint);
        }
        return services;
    }

    /// <summary>Serves the Prometheus scrape at <c>/metrics</c> on the Metrics endpoint only.</summary>
    public static IApplicationBuilder UseXrayMetricsEndpoint(this IApplicationBuilder app) =>
        app.UseOpenTelemetryPrometheusScrapingEndpoint(
            meterProvider: null,
            predicate: context => context.Request.Path == ScrapePath && IsMetricsEndpoint(context),
            path: null,
            configureBranchedPipeline: null,
            optionsName: null);

    /// <summary>Whether the request came in on the Metrics endpoint (HTTP/1.1: scrapes and probes).</summary>
    public static bool IsMetricsEndpoint(HttpContext context) =>
        context.Features.Get<IConnectionItemsFeature>()?.Items.ContainsKey(MetricsConnectionItem) == true;

    private static string ServiceVersion()
    {
        Assembly assembly = typeof(XRayMetrics).Assembly;
        return assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
               ?? assembly.GetName().Version?.ToString() ?? "unknown";
    }
}
