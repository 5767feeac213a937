using System.ComponentModel.DataAnnotations;

namespace XRay.Server.Grpc;

/// <summary>
/// Per-call and per-connection bounds of the gRPC endpoint. Configuration section <c>Transport</c>. The largest
/// message is <c>Serving:MaxReceiveMessageBytes</c>; HTTP/2 stream and keep-alive limits are Kestrel's
/// own (<c>Kestrel:Limits:Http2</c>).
/// </summary>
public sealed class TransportOptions
{
    public const string SectionName = "Transport";

    /// <summary>
    /// Longest <c>request_id</c> accepted, in UTF-16 characters (default 256). Longer ids are refused INVALID_ARGUMENT
    /// before any work; on ClassifyStream the call ends with that status.
    /// </summary>
    [Range(1, 65536)]
    public int MaxRequestIdLength { get; set; } = 256;

    /// <summary>
    /// Seconds a message may take from its first byte to its last (default 30; 64 MiB in 30 s is 2.2 MB/s). A stalled
    /// upload is cut off with DEADLINE_EXCEEDED and its buffered bytes freed. Time between messages on an idle stream
    /// does not count.
    /// </summary>
    [Range(1, 3600)]
    public int MessageReadTimeoutSeconds { get; set; } = 30;

    /// <summary>
    /// Images one HTTP/2 connection may have admitted and unanswered at once, over all its calls (default 512). A
    /// unary call that would exceed it is refused RESOURCE_EXHAUSTED at once; a ClassifyStream stops being read until
    /// enough of its images are answered. A request with more images than this is admitted only when its connection
    /// has nothing else in flight.
    /// </summary>
    [Range(1, 1 << 20)]
    public int MaxImagesInFlightPerConnection { get; set; } = 512;

    /// <summary>
    /// Slowest upload accepted for unary request bodies, in bytes per second after a 5 s grace period (default 4096;
    /// Kestrel's MinRequestBodyDataRate). 0 turns it off. Streams are bounded by <see cref="MessageReadTimeoutSeconds"/>.
    /// </summary>
    [Range(0, int.MaxValue)]
    public int MinRequestBodyBytesPerSecond { get; set; } = 4096;

    public TimeSpan MessageReadTimeout => TimeSpan.FromSeconds(MessageReadTimeoutSeconds);
}
