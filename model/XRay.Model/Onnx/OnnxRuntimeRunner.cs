using System.Buffers;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace XRay.Model.Onnx;

/// <summary>
/// Runs a model's ONNX graph with ONNX Runtime on dedicated inference threads (<see cref="InferenceThreads"/>), one
/// <see cref="InferenceSession"/> per thread so that concurrent batches never share an intra-op thread pool. The graph
/// is exported in memory from a loaded checkpoint (<see cref="OnnxExporter"/>) or read from a file. Batches are handed
/// to ONNX Runtime where they lie (an <see cref="OrtValue"/> over the caller's pinned memory), and the logits are
/// written straight into the caller's buffer: no copy, no managed allocation per batch. Thread-safe.
/// </summary>
public sealed class OnnxRuntimeRunner : IInferenceRunner
{
    /// <summary>The name ONNX Runtime gives its CUDA execution provider.</summary>
    public const string CudaProvider = "CUDAExecutionProvider";

    private static readonly string[] InputNames = [OnnxExporter.InputName];
    private static readonly string[] OutputNames = [OnnxExporter.LogitsName];

    private readonly InferenceSession[] _sessions;
    private readonly ThreadLocal<InferenceSession?> _session = new();
    private readonly RunOptions _runOptions = new();
    private readonly InferenceThreads _threads;
    private readonly long[] _imageShape;
    private int _nextSession = -1;

    /// <summary>Exports <paramref name="model"/> in memory and runs that graph. Does not dispose the model.</summary>
    /// <exception cref="ArgumentException">Unknown device or precision, cuda asked for but unavailable, or Workers out of range.</exception>
    public OnnxRuntimeRunner(LoadedModel model, RunnerOptions options)
        : this(OnnxExporter.Export(model ?? throw new ArgumentNullException(nameof(model))), model.Manifest, options)
    {
    }

    /// <summary>Runs an ONNX graph with input <c>input</c> and output <c>logits</c> (as <see cref="OnnxExporter"/> writes them).</summary>
    /// <param name="onnx">The serialised ONNX model.</param>
    /// <param name="manifest">What the graph's input and outputs are.</param>
    /// <param name="options">Device, precision (fp32 only), workers and thread settings.</param>
    public OnnxRuntimeRunner(byte[] onnx, ModelManifest manifest, RunnerOptions options)
    {
        ArgumentNullException.ThrowIfNull(onnx);
        ArgumentNullException.ThrowIfNull(manifest);
        ArgumentNullException.ThrowIfNull(options);
        manifest.Validate();
        Device = ResolveDevice(options.Device);
        Precision = (options.Precision ?? "").Trim().ToLowerInvariant() switch
        {
            "fp32" => "fp32",
            _ => throw new ArgumentException(
                $"Precision '{options.Precision}' is not available on ONNX Runtime here; it runs fp32 (use the torch runtime for bf16).", nameof(options)),
        };
        if (options.Workers is < 1 or > ModelRunner.MaxWorkers)
        {
            throw new ArgumentException($"Workers must be in [1, {ModelRunner.MaxWorkers}]; got {options.Workers}.", nameof(options));
        }

        Manifest = manifest;
        var spec = manifest.Preprocessing;
        InputLength = spec.OutputLength;
        NumClasses = manifest.ClassNames.Count;
        _imageShape = [spec.Channels, spec.CropSize, spec.CropSize];
        IntraOpThreads = options.IntraOpThreads > 0
            ? options.IntraOpThreads
            : Math.Max(1, Environment.ProcessorCount / options.Workers);

        try
        {
            _sessions = CreateSessions(onnx, options);
        }
        catch (ArgumentException) when (Device == "cuda" && IsAuto(options.Device))
        {
            // auto: the GPU package lists its CUDA provider even where no GPU or CUDA runtime is; fall back to the CPU.
            Device = "cpu";
            _sessions = CreateSessions(onnx, options);
        }

        var inputs = _sessions[0].InputMetadata;
        var outputs = _sessions[0].OutputMetadata;
        if (!inputs.ContainsKey(OnnxExporter.InputName) || !outputs.ContainsKey(OnnxExporter.LogitsName))
        {
            DisposeSessions();
            throw new ArgumentException(
                $"The ONNX graph must have an input '{OnnxExporter.InputName}' and an output '{OnnxExporter.LogitsName}'; " +
                $"it has inputs [{string.Join(", ", inputs.Keys)}] and outputs [{string.Join(", ", outputs.Keys)}].", nameof(onnx));
        }

        // Each inference thread takes its own session, once.
        _threads = new InferenceThreads(options.Workers, EnterThread, Forward);
    }

    public ModelManifest Manifest { get; }

    /// <summary><c>onnxruntime</c>.</summary>
    public string Runtime => "onnxruntime";

    /// <summary><c>cpu</c> or <c>cuda</c>.</summary>
    public string Device { get; private set; }

    /// <summary><c>fp32</c>.</summary>
    public string Precision { get; }

    public int InputLength { get; }

    public int NumClasses { get; }

    /// <summary>Intra-op threads of each session: <see cref="RunnerOptions.IntraOpThreads"/>, or cores / workers.</summary>
    public int IntraOpThreads { get; }

    /// <summary>Whether this process's ONNX Runtime has the CUDA execution provider (the GPU package, built with -p:OnnxRuntimeGpu=true).</summary>
    public static bool CudaAvailable => OrtEnv.Instance().GetAvailableProviders().Contains(CudaProvider);

    public Task RunAsync(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits, CancellationToken cancellationToken = default) =>
        _threads.RunAsync(this, input, batchSize, logits, cancellationToken);

    public Task WarmUpAsync(IEnumerable<int> batchSizes, CancellationToken cancellationToken = default) =>
        _threads.WarmUpAsync(batchSizes, InputLength, NumClasses, cancellationToken);

    public void Dispose()
    {
        _threads.Dispose();
        DisposeSessions();
        _runOptions.Dispose();
        _session.Dispose();
    }

    private static bool IsAuto(string? device) => string.Equals(device?.Trim(), "auto", StringComparison.OrdinalIgnoreCase);

    private InferenceSession[] CreateSessions(byte[] onnx, RunnerOptions options)
    {
        var sessions = new InferenceSession[options.Workers];
        try
        {
            for (var i = 0; i < sessions.Length; i++)
            {
                using var sessionOptions = CreateSessionOptions(options);
                try
                {
                    sessions[i] = new InferenceSession(onnx, sessionOptions);
                }
                catch (OnnxRuntimeException e) when (Device == "cuda")
                {
                    throw new ArgumentException($"ONNX Runtime could not start its CUDA execution provider: {e.Message}", nameof(options), e);
                }
            }

            return sessions;
        }
        catch
        {
            foreach (var session in sessions)
            {
                session?.Dispose();
            }

            throw;
        }
    }

    private static string ResolveDevice(string? device) => (device ?? "").Trim().ToLowerInvariant() switch
    {
        "auto" => CudaAvailable ? "cuda" : "cpu",
        "cpu" => "cpu",
        "cuda" when CudaAvailable => "cuda",
        "cuda" => throw new ArgumentException(
            $"Device 'cuda' was requested but this ONNX Runtime has no {CudaProvider} (providers: " +
            $"{string.Join(", ", OrtEnv.Instance().GetAvailableProviders())}); build with -p:OnnxRuntimeGpu=true for the CUDA package.",
            nameof(device)),
        _ => throw new ArgumentException($"Unknown device '{device}'; expected 'auto', 'cpu' or 'cuda'.", nameof(device)),
    };

    private SessionOptions CreateSessionOptions(RunnerOptions options)
    {
        var sessionOptions = new SessionOptions
        {
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            // One batch at a time per session, its operators in order: the parallelism is inside each operator.
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            IntraOpNumThreads = IntraOpThreads,
            InterOpNumThreads = 1,
            EnableMemoryPattern = options.MemoryPattern,
            EnableCpuMemArena = options.CpuMemoryArena,
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
        };
        sessionOptions.AddSessionConfigEntry("session.intra_op.allow_spinning", options.AllowSpinning ? "1" : "0");
        try
        {
            if (Device == "cuda")
            {
                sessionOptions.AppendExecutionProvider_CUDA(0);
            }
        }
        catch (OnnxRuntimeException e)
        {
            sessionOptions.Dispose();
            throw new ArgumentException($"ONNX Runtime could not start its CUDA execution provider: {e.Message}", nameof(options), e);
        }

        return sessionOptions;
    }

    private IDisposable? EnterThread()
    {
        _session.Value = _sessions[Interlocked.Increment(ref _nextSession) % _sessions.Length];
        return null;
    }

    private unsafe void Forward(ReadOnlyMemory<float> input, int batchSize, Memory<float> logits)
    {
        var session = _session.Value ?? throw new InvalidOperationException("Not an inference thread of this runner.");
        long[] inputShape = [batchSize, _imageShape[0], _imageShape[1], _imageShape[2]];
        long[] outputShape = [batchSize, NumClasses];
        using MemoryHandle inputPin = input.Pin();
        using MemoryHandle outputPin = logits.Pin();
        using var x = OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, TensorElementType.Float, inputShape,
            (nint)inputPin.Pointer, (long)batchSize * InputLength * sizeof(float));
        using var y = OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, TensorElementType.Float, outputShape,
            (nint)outputPin.Pointer, (long)batchSize * NumClasses * sizeof(float));
        session.Run(_runOptions, InputNames, [x], OutputNames, [y]);
    }

    private void DisposeSessions()
    {
        foreach (var session in _sessions)
        {
            session?.Dispose();
        }
    }
}
