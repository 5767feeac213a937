using System.Diagnostics;
using Microsoft.Extensions.Options;
using XRay.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>
/// Runs image decodes, at most <see cref="DecodingOptions.MaxConcurrentDecodes"/> at once: a burst of large images
/// costs a bounded amount of memory and CPU, and other callers' requests keep the rest. Callers take their room in the
/// batcher's queue before they wait here, so that work the queue could not take is refused before it is decoded.
/// </summary>
public sealed class DecodePool : IDisposable
{
    private readonly SemaphoreSlim _slots;
    private readonly long _maxPixels;
    private readonly XRayMetrics? _metrics;
    private long _started;
    private int _waiting;

    /// <param name="metrics">Where decodes running, waiting and their wait times are reported; null: nowhere.</param>
    public DecodePool(IOptions<DecodingOptions> options, XRayMetrics? metrics = null)
    {
        DecodingOptions decoding = options.Value;
        Concurrency = decoding.EffectiveMaxConcurrentDecodes;
        _maxPixels = decoding.MaxPixels;
        _slots = new SemaphoreSlim(Concurrency, Concurrency);
        _metrics = metrics;
        metrics?.ObserveDecodesFrom(() => (Running, Waiting));
    }

    /// <summary>Decodes that may run at once.</summary>
    public int Concurrency { get; }

    /// <summary>Decodes running now.</summary>
    public int Running => Concurrency - _slots.CurrentCount;

    /// <summary>Decodes waiting for a slot.</summary>
    public int Waiting => Volatile.Read(ref _waiting);

    /// <summary>Decodes started since start-up.</summary>
    public long Started => Interlocked.Read(ref _started);

    /// <summary>Decodes <paramref name="encoded"/> into <paramref name="destination"/> once a slot is free.</summary>
    /// <exception cref="InvalidImageException">Not a decodable image, or larger than <see cref="DecodingOptions.MaxPixels"/>.</exception>
    /// <exception cref="OperationCanceledException">Cancelled while waiting for a slot.</exception>
    /// <returns>What the decoder saw of the image (size, colour), for <see cref="RadiographCheck"/>.</returns>
    public async Task<ImageFacts> DecodeAsync(ImagePreprocessor preprocessor, ReadOnlyMemory<byte> encoded, float[] destination, CancellationToken cancellationToken)
    {
        ImageFacts facts = default;
        await RunAsync(() => facts = preprocessor.Decode(encoded.Span, destination, _maxPixels), cancellationToken).ConfigureAwait(false);
        return facts;
    }

    /// <summary>Runs <paramref name="decode"/> on the caller's thread once a slot is free.</summary>
    internal async Task RunAsync(Action decode, CancellationToken cancellationToken)
    {
        long queued = Stopwatch.GetTimestamp();
        Interlocked.Increment(ref _waiting);
        try
        {
            await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _waiting);
        }
        _metrics?.DecodeWaited(Stopwatch.GetElapsedTime(queued));

        try
        {
            Interlocked.Increment(ref _started);
            decode();
        }
        finally
        {
            _slots.Release();
        }
    }

    public void Dispose() => _slots.Dispose();
}
