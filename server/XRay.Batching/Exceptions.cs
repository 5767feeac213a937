namespace XRay.Batching;

public enum RejectionReason
{
    /// <summary>The queue could not take all of the request's items.</summary>
    QueueFull,
    /// <summary>The batcher is draining or disposed.</summary>
    ShuttingDown,
    /// <summary>The request's deadline passed before all of its items were dispatched.</summary>
    DeadlineExceeded,
    /// <summary>
    /// Refused at admission: the time left before the request's deadline is shorter than the estimated wait for its
    /// items to be computed (the items ahead of it at the measured time per item), so it would time out in the queue.
    /// </summary>
    DeadlineUnmeetable,
}

/// <summary>A request was not (fully) run; <see cref="Reason"/> says why. None of its queued items were computed.</summary>
public sealed class BatchRejectedException : Exception
{
    public BatchRejectedException(RejectionReason reason, string message) : base(message) => Reason = reason;

    public RejectionReason Reason { get; }
}

/// <summary>A batch holding some of the request's items failed; <see cref="Exception.InnerException"/> says why.</summary>
public sealed class BatchExecutionException : Exception
{
    public BatchExecutionException(string message, Exception innerException) : base(message, innerException)
    {
    }
}
