using System.Collections.Concurrent;
using XRay.Model;
using XRay.Server.Model;

namespace XRay.Server.Tests.Infrastructure;

/// <summary>
/// A model whose logits are a known function of each image (class c: mean(image) * (c + 1) - c / 10), whose
/// batches can be held at a gate, and which can be told to fail: lets tests control timing without sleeping.
/// </summary>
internal sealed class FakeModelBackend : IModelBackend
{
    private readonly ConcurrentQueue<int> _batchSizes = new();
    private readonly ConcurrentQueue<float[]> _batchInputs = new();
    private readonly TaskCompletionSource _disposed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile TaskCompletionSource _gate = Open();
    private int _imagesComputed;

    /// <param name="logitOffset">Added to every logit: tells two fakes' answers apart.</param>
    public FakeModelBackend(int classes = 14, string name = "fake", string version = "1.0.0", float logitOffset = 0)
    {
        LogitOffset = logitOffset;
        Manifest = new ModelManifest
        {
            Name = name,
            Version = version,
            Architecture = "fake",
            ClassNames = ChestXrayFindings.Nih14.Take(classes).ToArray(),
            Description = "test double. Not for clinical use.",
        };
    }

    public ModelManifest Manifest { get; }
    public string Runtime => "fake";
    public float LogitOffset { get; }
    public string Device => "cpu";

    /// <summary>Completes when the server has disposed this model.</summary>
    public Task Disposed => _disposed.Task;
    public string Precision => "fp32";

    /// <summary>Sizes of the batches started, in order.</summary>
    public IReadOnlyCollection<int> BatchSizes => _batchSizes;

    /// <summary>The input of each batch started, in order: its images concatenated.</summary>
    public IReadOnlyCollection<float[]> BatchInputs => _batchInputs;

    public int ImagesComputed => Volatile.Read(ref _imagesComputed);

    /// <summary>Completes with the size of each batch as it starts running.</summary>
    public event Action<int>? BatchStarted;

    /// <summary>When set, the next batches throw this.</summary>
    public Exception? Failure { get; set; }

    /// <summary>Batches started from now on wait until <see cref="Release"/>.</summary>
    public void Hold() => _gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Release() => _gate.TrySetResult();

    public static float[] ExpectedLogits(ReadOnlySpan<float> image, int classes)
    {
        double sum = 0;
        foreach (float value in image) sum += value;
        float mean = (float)(sum / image.Length);
        var logits = new float[classes];
        for (int c = 0; c < classes; c++) logits[c] = mean * (c + 1) - c / 10f;
        return logits;
    }

    public async Task RunAsync(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits, CancellationToken cancellationToken)
    {
        _batchSizes.Enqueue(batchSize);
        // A copy: the server reuses its batch buffers once the batch is answered.
        _batchInputs.Enqueue(input[..(batchSize * Manifest.Preprocessing.OutputLength)].ToArray());
        BatchStarted?.Invoke(batchSize);
        await _gate.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        if (Failure is { } failure) throw failure;

        Interlocked.Add(ref _imagesComputed, batchSize);
        int classes = Manifest.ClassNames.Count, length = Manifest.Preprocessing.OutputLength;
        for (int i = 0; i < batchSize; i++)
        {
            ExpectedLogits(input.Span.Slice(i * length, length), classes).CopyTo(logits.Span[(i * classes)..]);
        }
        for (int i = 0; i < batchSize * classes; i++) logits.Span[i] += LogitOffset;
    }

    public Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken) => Task.CompletedTask;

    public void Dispose() => _disposed.TrySetResult();

    private static TaskCompletionSource Open()
    {
        var open = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        open.SetResult();
        return open;
    }
}

/// <summary>Hands the server a backend per model path (<see cref="ModelOptions.Path"/>); a path it does not know fails to load.</summary>
internal sealed class FakeModelCatalog(IReadOnlyDictionary<string, IModelBackend> backends) : IModelBackendFactory
{
    public IModelBackend Create(ModelOptions options, int modelInstances) =>
        backends.TryGetValue(options.Path ?? "", out IModelBackend? backend)
            ? backend
            : throw new FileNotFoundException($"No checkpoint at '{options.Path}' (manifest.json not found).");
}

/// <summary>Hands the server a given backend, optionally only once the test allows loading to finish.</summary>
internal sealed class FakeModelBackendFactory(IModelBackend backend) : IModelBackendFactory
{
    public TaskCompletionSource? LoadGate { get; init; }

    public IModelBackend Create(ModelOptions options, int modelInstances)
    {
        LoadGate?.Task.Wait(TimeSpan.FromSeconds(30));
        return backend;
    }
}
