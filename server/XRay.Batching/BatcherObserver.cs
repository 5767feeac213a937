namespace XRay.Batching;

/// <summary>
/// Optional hooks for metrics and logging; every method is a no-op unless overridden. Called outside the
/// batcher's lock, possibly from several threads at once. Overrides must be quick and must not throw.
/// </summary>
public class BatcherObserver
{
    /// <summary>A batch of <paramref name="batchSize"/> items was handed to the handler.</summary>
    public virtual void BatchStarted(int batchSize) { }

    /// <summary>A batch finished; <paramref name="error"/> is null on success.</summary>
    public virtual void BatchCompleted(int batchSize, TimeSpan duration, Exception? error) { }

    /// <summary>A request of <paramref name="items"/> items was rejected (at admission or on its deadline).</summary>
    public virtual void RequestRejected(RejectionReason reason, int items) { }

    /// <summary>A request of <paramref name="items"/> items was cancelled by its caller while queued.</summary>
    public virtual void RequestCancelled(int items) { }
}
