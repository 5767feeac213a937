using System.ComponentModel.DataAnnotations;
using XRay.Model;

namespace XRay.Server.Grpc;

/// <summary>Bounds on decoding encoded (PNG, JPEG) images. Configuration section <c>Decoding</c>.</summary>
public sealed class DecodingOptions
{
    public const string SectionName = "Decoding";
    public const long DefaultMaxPixels = 25_000_000;

    /// <summary>
    /// Largest image decoded, in pixels (width x height, read from the header before any pixel memory is allocated;
    /// larger images get INVALID_ARGUMENT). Default 25,000,000 (5000 x 5000): the largest chest films are about
    /// 4300 x 3500 (15 Mpx). A decode holds about 5 bytes per pixel for grayscale PNG and 8 for colour, so
    /// <see cref="MaxConcurrentDecodes"/> x MaxPixels x 8 bytes bounds decoding memory. Range 1 to 40,000,000.
    /// </summary>
    [Range(1, ImagePreprocessor.MaxPixels)]
    public long MaxPixels { get; set; } = DefaultMaxPixels;

    /// <summary>
    /// Images decoded at once; the others wait their turn (first come, first served). Waiting images already hold
    /// their room in the batcher's queue, so at most <c>Batching:MaxQueueSize</c> wait, and a call's deadline or
    /// cancellation ends its wait. Default 0: one per processor. Range 0 to 1024.
    /// </summary>
    [Range(0, 1024)]
    public int MaxConcurrentDecodes { get; set; }

    /// <summary><see cref="MaxConcurrentDecodes"/>, with 0 resolved to the processor count.</summary>
    public int EffectiveMaxConcurrentDecodes => MaxConcurrentDecodes > 0 ? MaxConcurrentDecodes : Environment.ProcessorCount;
}
