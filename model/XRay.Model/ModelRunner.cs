using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace XRay.Model;

/// <summary>
/// Runs a network on dedicated inference threads. Each worker enables inference mode on itself (grad mode is
/// per thread in libtorch) and runs every request inside a dispose scope, so no tensor outlives its request.
/// Requests wait in one FIFO queue that all workers take from. Thread-safe.
/// </summary>
/// <remarks>
/// The runner moves the model's network to the device and precision asked for, in place, and puts it in eval
/// mode; it does not dispose the model. The sigmoid is left to the caller: outputs are raw logits.
/// </remarks>
public sealed class ModelRunner : IDisposable
{
    /// <summary>Upper bound for <see cref="RunnerOptions.Workers"/>.</summary>
    public const int MaxWorkers = 64;

    private readonly nn.Module<Tensor, Tensor> _network;
    private readonly Device _device;
    private readonly ScalarType _dtype;
    private readonly int _cropSize;
    private readonly int _channels;
    private readonly BlockingCollection<WorkItem> _queue = new(new ConcurrentQueue<WorkItem>());
    private readonly Thread[] _workers;
    private volatile bool _disposed;

    /// <exception cref="ArgumentException">Unknown device or precision, cuda asked for but unavailable, or Workers out of [1, 64].</exception>
    public ModelRunner(LoadedModel model, RunnerOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);

        Device = (options.Device ?? "").Trim().ToLowerInvariant() switch
        {
            "auto" => cuda.is_available() ? "cuda" : "cpu",
            "cpu" => "cpu",
            "cuda" when cuda.is_available() => "cuda",
            "cuda" => throw new ArgumentException(
                "Device 'cuda' was requested but CUDA is not available (torch.cuda.is_available() is false: CPU-only libtorch or no GPU).",
                nameof(options)),
            _ => throw new ArgumentException(
                $"Unknown device '{options.Device}'; expected 'auto', 'cpu' or 'cuda'.", nameof(options)),
        };
        (Precision, _dtype) = (options.Precision ?? "").Trim().ToLowerInvariant() switch
        {
            "fp32" => ("fp32", ScalarType.Float32),
            "bf16" => ("bf16", ScalarType.BFloat16),
            _ => throw new ArgumentException(
                $"Unknown precision '{options.Precision}'; expected 'fp32' or 'bf16'.", nameof(options)),
        };
        if (options.Workers is < 1 or > MaxWorkers)
        {
            throw new ArgumentException(
                $"Workers must be in [1, {MaxWorkers}]; got {options.Workers}.", nameof(options));
        }

        Manifest = model.Manifest;
        var crop = Manifest.Preprocessing.CropSize;
        _channels = Manifest.Preprocessing.Channels;
        InputLength = _channels * crop * crop;
        NumClasses = Manifest.ClassNames.Count;
        _cropSize = crop;
        _device = Device == "cuda" ? CUDA : CPU;
        _network = model.Network;
        _network.to(_device);
        if (_dtype != ScalarType.Float32)
        {
            _network.to(_dtype);
        }

        _network.eval();

        _workers = new Thread[options.Workers];
        for (var i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"xray-inference-{i}" };
            _workers[i].Start();
        }
    }

    public ModelManifest Manifest { get; }

    /// <summary><c>cpu</c> or <c>cuda</c>.</summary>
    public string Device { get; }

    /// <summary><c>fp32</c> or <c>bf16</c>.</summary>
    public string Precision { get; }

    /// <summary>Floats per image: <c>Channels * CropSize * CropSize</c> (<see cref="PreprocessingSpec.Channels"/>).</summary>
    public int InputLength { get; }

    public int NumClasses { get; }

    /// <summary>
    /// Runs one batch. <paramref name="input"/> holds <c>batchSize * InputLength</c> floats (NCHW, normalised) and must
    /// not change until the task completes. Returns <c>batchSize * NumClasses</c> raw logits, row per image.
    /// Cancellation takes effect while the request is queued, not during its forward.
    /// </summary>
    public Task<float[]> RunAsync(float[] input, int batchSize, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(input);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (input.Length != (long)batchSize * InputLength)
        {
            throw new ArgumentException(
                $"Input holds {input.Length} floats; a batch of {batchSize} needs {batchSize} x {InputLength} = {(long)batchSize * InputLength}.",
                nameof(input));
        }

        return Enqueue(new WorkItem(input, batchSize, null), cancellationToken);
    }

    /// <summary>
    /// Runs one forward per distinct batch size on every worker (the first forward of each shape builds oneDNN
    /// primitives and is several times slower). Completes when all have run.
    /// </summary>
    public async Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(batchSizes);
        foreach (var batchSize in batchSizes.Distinct())
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1, nameof(batchSizes));
            // Each warm-up item holds its worker at the barrier until all have run, so every worker takes exactly one.
            // Not disposed: a worker may still be returning from SignalAndWait when the last task completes.
            var barrier = new Barrier(_workers.Length);
            var input = new float[batchSize * InputLength];
            var tasks = Enumerable.Range(0, _workers.Length)
                .Select(_ => Enqueue(new WorkItem(input, batchSize, barrier), cancellationToken))
                .ToArray();
            await Task.WhenAll(tasks).ConfigureAwait(false);
        }
    }

    /// <summary>Fails queued requests with <see cref="ObjectDisposedException"/>, lets running ones finish and joins the workers.</summary>
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

    private Task<float[]> Enqueue(WorkItem item, CancellationToken cancellationToken)
    {
        if (_disposed)
        {
            LeaveBarrier(item.Barrier, wait: false);
            throw new ObjectDisposedException(nameof(ModelRunner));
        }

        if (cancellationToken.IsCancellationRequested)
        {
            LeaveBarrier(item.Barrier, wait: false);
            return Task.FromCanceled<float[]>(cancellationToken);
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
            throw new ObjectDisposedException(nameof(ModelRunner));
        }

        return item.Completion.Task;
    }

    private void WorkerLoop()
    {
        // Thread-local: every forward on this thread records no autograd graph and skips version counting.
        using var inference = inference_mode();
        foreach (var item in _queue.GetConsumingEnumerable())
        {
            item.Registration.Dispose();
            if (_disposed)
            {
                item.Completion.TrySetException(new ObjectDisposedException(nameof(ModelRunner)));
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
                item.Completion.TrySetResult(Forward(item.Input, item.BatchSize));
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

    private float[] Forward(float[] input, int batchSize)
    {
        Debug.Assert(input.Length == batchSize * InputLength);
        using var scope = NewDisposeScope();
        var x = tensor(input, [batchSize, _channels, _cropSize, _cropSize]);
        if (_dtype != ScalarType.Float32 || _device.type != DeviceType.CPU)
        {
            x = x.to(_dtype, _device);
        }

        var logits = _network.call(x);
        if (logits.ndim != 2 || logits.shape[0] != batchSize || logits.shape[1] != NumClasses)
        {
            throw new InvalidOperationException(
                $"The network returned shape [{string.Join(", ", logits.shape)}]; expected [{batchSize}, {NumClasses}] for '{Manifest.Name}'.");
        }

        logits = logits.to(ScalarType.Float32, CPU).contiguous();
        var output = new float[batchSize * NumClasses];
        MemoryMarshal.Cast<byte, float>(logits.bytes).CopyTo(output);
        return output;
    }

    private sealed class WorkItem(float[] input, int batchSize, Barrier? barrier)
    {
        public float[] Input { get; } = input;
        public int BatchSize { get; } = batchSize;
        public Barrier? Barrier { get; } = barrier;
        public TaskCompletionSource<float[]> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public CancellationTokenRegistration Registration { get; set; }
    }
}
