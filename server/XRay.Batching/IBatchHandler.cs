namespace XRay.Batching;

/// <summary>Runs one batch on the model. Called by <see cref="DynamicBatcher{TInput, TOutput}"/>.</summary>
public interface IBatchHandler<TInput, TOutput>
{
    /// <summary>
    /// Must return exactly one output per input, in input order; otherwise every request in the batch fails.
    /// Concurrent calls happen only when <see cref="BatchingOptions.ModelInstances"/> is above 1.
    /// </summary>
    Task<IReadOnlyList<TOutput>> ExecuteAsync(IReadOnlyList<TInput> batch, CancellationToken cancellationToken);
}

/// <summary>One item's answer.</summary>
/// <param name="Output">The handler's output for this item.</param>
/// <param name="QueueTime">From the request's enqueue to the start of the batch that carried this item.</param>
/// <param name="ComputeTime">How long that batch ran.</param>
/// <param name="BatchSize">How many items that batch had (from all requests in it).</param>
public readonly record struct ItemResult<TOutput>(TOutput Output, TimeSpan QueueTime, TimeSpan ComputeTime, int BatchSize);
