namespace XRay.Server.Model;

/// <summary>A model swap that did not happen; the served model is unchanged. <see cref="Exception.Message"/> says why.</summary>
public sealed class ModelSwapException(ModelSwapException.Failure reason, string message, Exception? inner = null)
    : Exception(message, inner)
{
    public enum Failure
    {
        /// <summary>Another swap is in progress.</summary>
        Busy,
        /// <summary>No model is served yet, or the server is shutting down.</summary>
        NotServing,
        /// <summary>The new model failed to load or warm up.</summary>
        LoadFailed,
    }

    public Failure Reason { get; } = reason;
}
