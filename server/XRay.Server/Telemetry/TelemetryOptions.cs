using System.ComponentModel.DataAnnotations;

namespace XRay.Server.Telemetry;

/// <summary>Metrics and tracing settings. Configuration section <c>Telemetry</c>.</summary>
public sealed class TelemetryOptions : IValidatableObject
{
    public const string SectionName = "Telemetry";

    /// <summary>The <c>service.name</c> resource attribute (Prometheus: <c>target_info</c>). Default <c>xray-serving</c>.</summary>
    [Required]
    public string ServiceName { get; set; } = "xray-serving";

    /// <summary>
    /// Base URL of an OpenTelemetry collector, e.g. <c>http://otel-collector:4317</c>. Empty (the default): no OTLP
    /// export. When set, traces, metrics and logs are exported over OTLP, besides the Prometheus endpoint.
    /// </summary>
    public string? OtlpEndpoint { get; set; }

    /// <summary><c>grpc</c> (default, usually port 4317) or <c>http/protobuf</c> (usually 4318; paths /v1/traces etc. are appended).</summary>
    [RegularExpression("^(grpc|http/protobuf)$", ErrorMessage = "Telemetry:OtlpProtocol must be grpc or http/protobuf.")]
    public string OtlpProtocol { get; set; } = "grpc";

    /// <summary>
    /// Fraction of the traces that start at this server which are recorded, 0 to 1; default 1 (all). When the
    /// caller sends a W3C <c>traceparent</c>, its sampled flag decides instead.
    /// </summary>
    [Range(0.0, 1.0)]
    public double TraceSamplingRatio { get; set; } = 1.0;

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (!string.IsNullOrEmpty(OtlpEndpoint)
            && !(Uri.TryCreate(OtlpEndpoint, UriKind.Absolute, out Uri? uri) && uri.Scheme is "http" or "https"))
        {
            yield return new ValidationResult(
                $"Telemetry:OtlpEndpoint '{OtlpEndpoint}' is not an absolute http(s) URL.", [nameof(OtlpEndpoint)]);
        }
    }
}
