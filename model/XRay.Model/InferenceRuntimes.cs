using XRay.Model.Onnx;

namespace XRay.Model;

/// <summary>The execution runtimes a model can run on, by the names the server's <c>Model:Runtime</c> and the tools take.</summary>
public static class InferenceRuntimes
{
    /// <summary>TorchSharp (libtorch): fp32 and bf16.</summary>
    public const string Torch = "torch";

    /// <summary>ONNX Runtime on the graph <see cref="OnnxExporter"/> writes: fp32.</summary>
    public const string OnnxRuntime = "onnxruntime";

    /// <summary>The fastest runtime for the precision, as measured here: ONNX Runtime for fp32, TorchSharp for bf16.</summary>
    public const string Auto = "auto";

    /// <summary>Why <paramref name="runtime"/> cannot run <paramref name="precision"/>; null when it can.</summary>
    public static string? Incompatibility(string runtime, string precision) => runtime switch
    {
        Torch or Auto => null,
        OnnxRuntime when precision == "fp32" => null,
        OnnxRuntime => $"precision {precision} is not available on ONNX Runtime here (it runs fp32); use runtime torch or auto for {precision}.",
        _ => $"unknown runtime '{runtime}'; expected {Torch}, {OnnxRuntime} or {Auto}.",
    };

    /// <summary><see cref="Torch"/> or <see cref="OnnxRuntime"/>: <paramref name="runtime"/> with <see cref="Auto"/> resolved.</summary>
    /// <exception cref="ArgumentException">The runtime is unknown or cannot run the precision.</exception>
    public static string Resolve(string runtime, string precision) =>
        Incompatibility(runtime, precision) is { } error
            ? throw new ArgumentException(error)
            : runtime == Auto ? (precision == "bf16" ? Torch : OnnxRuntime) : runtime;

    /// <summary>
    /// A runner for <paramref name="model"/> on the runtime. ONNX Runtime runs a graph exported from the network, so the
    /// caller may dispose the model once this returns; TorchSharp runs the model's own network (keep it alive).
    /// </summary>
    public static IInferenceRunner Create(LoadedModel model, string runtime, RunnerOptions options) =>
        Resolve(runtime, options.Precision) == OnnxRuntime ? new OnnxRuntimeRunner(model, options) : new ModelRunner(model, options);
}
