using System.Collections.Concurrent;

namespace XRay.Model;

/// <summary>
/// Dedicated inference threads taking batches from one FIFO queue: what <see cref="ModelRunner"/> (TorchSharp) and
/// <see cref="Onnx.OnnxRuntimeRunner"/> share. A forward blocks its thread for the whole batch, so it never runs on
/// the thread pool that serves requests. Thread-safe.
/// </summary>
internal sealed class InferenceThreads : IDisposable
{
    /// <summary>Runs one batch on the calling inference thread: <c>batchSize</c> rows of input into as many rows of logits.</summary>
    public delegate void Forward(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits);

    private readonly Forward _forward;
    private readonly Func<IDisposable?> _enterThread;
    private readonly BlockingCollection<WorkItem> _queue = new(new ConcurrentQueue<WorkItem>());
    private readonly Thread[] _workers;
    private volatile bool _disposed;

    /// <param name="workers">Threads, each running whole batches.</param>
    /// <param name="enterThread">Called once on each thread before its first batch (e.g. torch's per-thread inference mode); disposed when it ends.</param>
    /// <param name="forward">Runs a batch on the calling thread.</param>
    public InferenceThreads(int workers, Func<IDisposable?> enterThread, Forward forward)
    {
        _enterThread = enterThread;
        _forward = forward;
        _workers = new Thread[workers];
        for (var i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"xray-inference-{i}" };
            _workers[i].Start();
        }
    }

    public int Count => _workers.Length;

    /// <summary>
    /// Queues a batch for <paramref name="runner"/> after checking it is open and the buffers fit. Cancellation takes
    /// effect while the batch is queued, not during its forward.
    /// </summary>
    public Task RunAsync(IInferenceRunner runner, ReadOnlyMemory<float> input, int batchSize, Memory<float> logits, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, runner);
        InferenceRunnerExtensions.CheckBatch(runner, input, batchSize, logits);
        return Enqueue(new WorkItem(input, batchSize, logits, null), cancellationToken);
    }

    /// <summary>
    /// Runs one forward per distinct batch size on every thread (the first forward of each shape builds kernels and
    /// is several times slower). Completes when all have run.
    /// </summary>
    public async Task WarmUpAsync(IEnumerable<int> batchSizes, int inputLength, int classes, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(batchSizes);
        foreach (var batchSize in batchSizes.Distinct())
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1, nameof(batchSizes));
            // Each warm-up item holds its worker at the barrier until all have run, so every worker takes exactly one.
            // Not disposed: a worker may still be returning from SignalAndWait when the last task completes.
            var barrier = new Barrier(_workers.Length);
            var input = new float[batchSize * inputLength];
            var tasks = Enumerable.Range(0, _workers.Length)
                .Select(_ => Enqueue(new WorkItem(input, batchSize, new float[batchSize * classes], barrier), cancellationToken))
                .ToArray();
            await Task.WhenAll(tasks).ConfigureAwait(false);
        }
    }

    /// <summary>Fails queued batches with <see cref="ObjectDisposedException"/>, lets running ones finish and joins the threads.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _queue.CompleteAdding();
        foreach (var worker in _workers)
        {
            if (worker != Thread.CurrentThread)
            {
                worker.Join();
            }
        }

        _queue.Dispose();
    }

    private Task Enqueue(WorkItem item, CancellationToken cancellationToken)
    {
        if (_disposed)
        {
            LeaveBarrier(item.Barrier, wait: false);
            throw new ObjectDisposedException(nameof(InferenceThreads));
        }

        if (cancellationToken.IsCancellationRequested)
        {
            LeaveBarrier(item.Barrier, wait: false);
            return Task.FromCanceled(cancellationToken);
        }

        if (cancellationToken.CanBeCanceled)
        {
            item.Registration = cancellationToken.Register(
                static state => ((WorkItem)state!).Completion.TrySetCanceled(), item);
        }

        try
        {
            _queue.Add(item);
        }
        catch (InvalidOperationException)
        {
            item.Registration.Dispose();
            LeaveBarrier(item.Barrier, wait: false);
            throw new ObjectDisposedException(nameof(InferenceThreads));
        }

        return item.Completion.Task;
    }

    private void WorkerLoop()
    {
        using var thread = _enterThread();
        foreach (var item in _queue.GetConsumingEnumerable())
        {
            item.Registration.Dispose();
            if (_disposed)
            {
                item.Completion.TrySetException(new ObjectDisposedException(nameof(InferenceThreads)));
                LeaveBarrier(item.Barrier, wait: false);
                continue;
            }

            if (item.Completion.Task.IsCompleted)
            {
                LeaveBarrier(item.Barrier, wait: false);
                continue; // cancelled while queued
            }

            try
            {
                _forward(item.Input, item.BatchSize, item.Logits);
                item.Completion.TrySetResult();
            }
            catch (Exception e)
            {
                item.Completion.TrySetException(e);
            }

            LeaveBarrier(item.Barrier, wait: true);
        }
    }

    /// <summary>Never throws: an exception here would end the worker thread and the process with it.</summary>
    private static void LeaveBarrier(Barrier? barrier, bool wait)
    {
        if (barrier is null)
        {
            return;
        }

        try
        {
            if (wait)
            {
                // Bounded, so a lost participant cannot hang a worker for good.
                barrier.SignalAndWait(TimeSpan.FromMinutes(5));
            }
            else
            {
                barrier.RemoveParticipant();
            }
        }
        catch (InvalidOperationException)
        {
            // Participant count already inconsistent after a timeout; warm-up is best effort.
        }
    }

    private sealed class WorkItem(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits, Barrier? barrier)
    {
        public ReadOnlyMemory<float> Input { get; } = input;
        public int BatchSize { get; } = batchSize;
        public Memory<float> Logits { get; } = logits;
        public Barrier? Barrier { get; } = barrier;
        public TaskCompletionSource Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public CancellationTokenRegistration Registration { get; set; }
    }
}
