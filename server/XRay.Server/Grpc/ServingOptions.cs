using System.ComponentModel.DataAnnotations;

namespace XRay.Server.Grpc;

/// <summary>gRPC transport settings. Configuration section <c>Serving</c>.</summary>
public sealed class ServingOptions
{
    public const string SectionName = "Serving";

    /// <summary>
    /// Largest request message accepted, in bytes. Default 64 MiB: a [32,3,224,224] float32 tensor is 19.3 MB.
    /// Larger messages get RESOURCE_EXHAUSTED from the gRPC layer.
    /// </summary>
    [Range(1024, int.MaxValue)]
    public int MaxReceiveMessageBytes { get; set; } = 64 * 1024 * 1024;

    /// <summary>
    /// Requests one ClassifyStream call may have in flight (default 256). When reached the server stops
    /// reading the stream until one completes, so HTTP/2 flow control pushes back on the client.
    /// </summary>
    [Range(1, 65536)]
    public int StreamMaxInFlight { get; set; } = 256;
}
