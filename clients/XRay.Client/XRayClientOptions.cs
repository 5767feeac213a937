namespace XRay.Client;

public sealed class XRayClientOptions
{
    /// <summary>Deadline applied to every call that is not given one (default 30 s).</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Attempts per call, the first included (default 4), for UNAVAILABLE (server starting, draining or
    /// unreachable) and RESOURCE_EXHAUSTED (queue full), with exponential backoff. 1 disables retries.
    /// </summary>
    public int MaxAttempts { get; set; } = 4;

    /// <summary>
    /// For a <c>dns:///host:port</c> address: how often the name is resolved again, so that replicas added behind it
    /// (e.g. pods of a Kubernetes headless Service) get calls (default 30 s). A failed connection re-resolves at once.
    /// </summary>
    public TimeSpan DnsRefreshInterval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>For a <c>dns:///</c> address: call the servers over TLS (default false). <c>https://</c> addresses say it themselves.</summary>
    public bool UseTls { get; set; }

    /// <summary>Largest message sent or received, in bytes (default 64 MiB, as the server).</summary>
    public int MaxMessageBytes { get; set; } = 64 * 1024 * 1024;
}
