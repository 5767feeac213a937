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

    /// <summary>Largest message sent or received, in bytes (default 64 MiB, as the server).</summary>
    public int MaxMessageBytes { get; set; } = 64 * 1024 * 1024;
}
