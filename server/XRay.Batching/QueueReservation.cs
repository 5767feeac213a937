namespace XRay.Batching;

/// <summary>
/// Room for a request's items in a <see cref="DynamicBatcher{TInput, TOutput}"/>'s queue, taken before the items exist
/// (e.g. before images are decoded), so that work the queue could not take is refused before it is done. It counts
/// against <see cref="BatchingOptions.MaxQueueSize"/> until it is used by <c>EnqueueAsync</c> or disposed.
/// </summary>
/// <remarks>Dispose it on every path (a <c>using</c>): disposing after it was used does nothing.</remarks>
public sealed class QueueReservation : IDisposable
{
    private readonly Action<QueueReservation> _release;
    private int _claimed;

    internal QueueReservation(int items, object caller, Action<QueueReservation> release)
    {
        Items = items;
        Caller = caller;
        _release = release;
    }

    /// <summary>How many items the reservation holds room for.</summary>
    public int Items { get; }

    /// <summary>The caller whose share the request counts against.</summary>
    internal object Caller { get; }

    /// <summary>True the first time only: the reservation is then used (or released) and can be neither again.</summary>
    internal bool TryClaim() => Interlocked.Exchange(ref _claimed, 1) == 0;

    /// <summary>Gives the room back unless the reservation was used.</summary>
    public void Dispose()
    {
        if (TryClaim())
        {
            _release(this);
        }
    }
}
