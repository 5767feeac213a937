namespace XRay.Server.Tests;

/// <summary>
/// The observability tests run one at a time, after the others. Every server in this process builds OpenTelemetry
/// tracer and meter providers whose listeners are process-wide, and these tests measure real time (Prometheus
/// scrapes, deadlines); run alone, they neither slow the other end-to-end tests' timing-sensitive steps on two
/// cores nor get slowed by them.
/// </summary>
[CollectionDefinition(nameof(ObservabilityCollection), DisableParallelization = true)]
public sealed class ObservabilityCollection;
