namespace XRay.Batching;

/// <summary>
/// Dynamic batching settings, bound from the <c>Batching</c> configuration section. Names and meanings follow
/// Triton's dynamic batcher (<c>max_batch_size</c>, <c>max_queue_delay_microseconds</c>, <c>max_queue_size</c>,
/// <c>instance_group.count</c>); sizes count images, not requests.
/// </summary>
public sealed class BatchingOptions
{
    public const string SectionName = "Batching";
    public const int DefaultMaxBatchSize = 32;
    public const long DefaultMaxQueueDelayMicroseconds = 0;
    public const int DefaultMaxQueueSize = 1024;
    public const int DefaultModelInstances = 1;

    private const int MaxBatchSizeLimit = 4096;
    private const long MaxQueueDelayLimit = 10_000_000;
    private const int MaxQueueSizeLimit = 1_000_000;
    private const int ModelInstancesLimit = 64;

    /// <summary>
    /// Most images handed to the model in one batch (Triton <c>max_batch_size</c>). A request with more images
    /// is split across batches. Range 1–4096; default <see cref="DefaultMaxBatchSize"/> (32).
    /// </summary>
    public int MaxBatchSize { get; set; } = DefaultMaxBatchSize;

    /// <summary>
    /// How long, in microseconds, a partial batch may wait for more images once a model instance is free, counted
    /// from the enqueue time of the oldest waiting image (Triton <c>max_queue_delay_microseconds</c>). 0 never
    /// waits: an idle model starts at once and batches form only from what queues while it is busy.
    /// Range 0–10,000,000 (10 s); default <see cref="DefaultMaxQueueDelayMicroseconds"/> (0).
    /// </summary>
    public long MaxQueueDelayMicroseconds { get; set; } = DefaultMaxQueueDelayMicroseconds;

    /// <summary>
    /// Most images waiting for a batch (Triton <c>max_queue_size</c>); a request that does not fit is rejected at
    /// once. Must be at least <see cref="MaxBatchSize"/>. Range 1–1,000,000; default
    /// <see cref="DefaultMaxQueueSize"/> (1024).
    /// </summary>
    public int MaxQueueSize { get; set; } = DefaultMaxQueueSize;

    /// <summary>
    /// How many batches may run at once, one per model instance (Triton <c>instance_group.count</c>).
    /// Range 1–64; default <see cref="DefaultModelInstances"/> (1).
    /// </summary>
    public int ModelInstances { get; set; } = DefaultModelInstances;

    /// <summary><see cref="MaxQueueDelayMicroseconds"/> as a <see cref="TimeSpan"/>.</summary>
    public TimeSpan MaxQueueDelay => TimeSpan.FromMicroseconds(MaxQueueDelayMicroseconds);

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first option out of range.</summary>
    public void Validate()
    {
        if (FirstProblem() is { } problem) throw new ArgumentOutOfRangeException(problem.Option, problem.Value, problem.Message);
    }

    /// <summary>
    /// What is wrong with these options, e.g. "Batching:MaxBatchSize is 0; it must be between 1 and 4096.", or null
    /// when they are valid. The one range check: <see cref="Validate"/> and the server's start-up validation use it.
    /// </summary>
    public string? Problem => FirstProblem()?.Message;

    private (string Option, long Value, string Message)? FirstProblem() =>
        OutOfRange(nameof(MaxBatchSize), MaxBatchSize, 1, MaxBatchSizeLimit)
        ?? OutOfRange(nameof(MaxQueueDelayMicroseconds), MaxQueueDelayMicroseconds, 0, MaxQueueDelayLimit)
        ?? OutOfRange(nameof(MaxQueueSize), MaxQueueSize, 1, MaxQueueSizeLimit)
        ?? OutOfRange(nameof(ModelInstances), ModelInstances, 1, ModelInstancesLimit)
        // A full batch could never queue up, and a MaxBatchSize request would always be rejected.
        ?? (MaxQueueSize < MaxBatchSize
            ? (nameof(MaxQueueSize), MaxQueueSize, $"{SectionName}:{nameof(MaxQueueSize)} is {MaxQueueSize}; it must be at least " +
                $"{SectionName}:{nameof(MaxBatchSize)} ({MaxBatchSize}).")
            : null);

    private static (string, long, string)? OutOfRange(string name, long value, long min, long max) =>
        value < min || value > max ? (name, value, $"{SectionName}:{name} is {value}; it must be between {min} and {max}.") : null;

    internal BatchingOptions Clone() => (BatchingOptions)MemberwiseClone();
}
