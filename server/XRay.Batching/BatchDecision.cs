namespace XRay.Batching;

internal enum BatchAction { Idle, Dispatch, Wait }

/// <summary>
/// What the dispatch loop should do when a model instance is free. Kept a pure function of the queue and the
/// clock, as in Triton's dynamic_batch_scheduler, so the policy is testable apart from the waiting.
/// </summary>
internal readonly record struct BatchDecision(BatchAction Action, int BatchSize, DateTimeOffset WaitUntil)
{
    public static BatchDecision Idle => default;

    public static BatchDecision Dispatch(int batchSize) => new(BatchAction.Dispatch, batchSize, default);

    public static BatchDecision WaitFor(DateTimeOffset until) => new(BatchAction.Wait, 0, until);

    /// <param name="preferred">
    /// When set, a batch is cut down to the largest preferred size it can fill (the rest waits for the next free
    /// instance), so that the model does not run a size on a throughput cliff.
    /// </param>
    public static BatchDecision Decide(int queuedItems, DateTimeOffset oldestEnqueuedAt, DateTimeOffset now,
                                       int maxBatchSize, TimeSpan maxQueueDelay, PreferredBatchSizes? preferred = null)
    {
        if (queuedItems == 0)
        {
            return Idle;
        }

        if (queuedItems >= maxBatchSize)
        {
            return Dispatch(preferred?.Choose(maxBatchSize) ?? maxBatchSize);
        }

        // The delay is an absolute due time from the oldest item, so re-deciding early never extends the wait.
        var dueAt = oldestEnqueuedAt + maxQueueDelay;
        return now >= dueAt ? Dispatch(preferred?.Choose(queuedItems) ?? queuedItems) : WaitFor(dueAt);
    }
}
