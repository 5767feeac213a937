using System.Text.Json.Serialization;

namespace XRay.Model;

/// <summary>
/// Per-class probability calibration stored in the manifest: Platt scaling, <c>p = sigmoid(scale * logit + offset)</c>
/// for each class. Temperature scaling is the case <c>offset = 0</c> (<c>scale = 1 / T</c>); <c>scale = 1, offset = 0</c>
/// is the plain sigmoid. Fitted on out-of-fold predictions by <c>xray-train calibrate</c>; applied by
/// <see cref="ProbabilityMap"/>, the one place logits become probabilities (server, <c>evaluate</c>, ONNX export).
/// </summary>
public sealed record ProbabilityCalibration
{
    /// <summary>The only method: <c>platt</c>.</summary>
    public const string Platt = "platt";

    /// <summary><see cref="Platt"/>.</summary>
    public string Method { get; init; } = Platt;

    /// <summary>One per class, in the manifest's class order.</summary>
    public required IReadOnlyList<PlattScaling> Classes { get; init; }

    /// <summary>What the calibration was fitted on (free text, for people).</summary>
    public string? FittedOn { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid value.</summary>
    public void Validate(IReadOnlyList<string> classNames)
    {
        if (Method != Platt)
        {
            throw new ArgumentException($"calibration method '{Method}' is not supported; the only one is '{Platt}'.");
        }

        if (Classes is null || Classes.Count != classNames.Count)
        {
            throw new ArgumentException($"calibration has {Classes?.Count ?? 0} entries for {classNames.Count} classes.");
        }

        for (var c = 0; c < Classes.Count; c++)
        {
            var k = Classes[c];
            if (k is null || !float.IsFinite(k.Scale) || !float.IsFinite(k.Offset) || k.Scale < 0)
            {
                throw new ArgumentException(
                    $"calibration for '{classNames[c]}' must have a finite scale >= 0 and a finite offset; got {k?.Scale}, {k?.Offset}.");
            }
        }
    }
}

/// <summary><c>p = sigmoid(Scale * logit + Offset)</c>. Scale 0 gives every image the same probability (a class without signal).</summary>
public sealed record PlattScaling(float Scale, float Offset)
{
    public static PlattScaling Identity { get; } = new(1f, 0f);

    public float Apply(float logit) => Probabilities.Sigmoid(Scale * logit + Offset);
}

/// <summary>How one class's decision threshold was chosen, with what it gave on the data it was chosen on.</summary>
/// <param name="Rule">The rule as a person reads it, e.g. "max F1 with precision &gt;= 0.2".</param>
/// <param name="PositiveRate">Share of images at or above the threshold.</param>
/// <param name="Prevalence">Share of images with the finding.</param>
public sealed record OperatingPoint(
    string Class,
    float Threshold,
    string Rule,
    double Sensitivity,
    double Specificity,
    [property: JsonNumberHandling(JsonNumberHandling.AllowNamedFloatingPointLiterals)] double Precision,
    double PositiveRate,
    double Prevalence);

/// <summary>The manifest's record of how <see cref="ModelManifest.Thresholds"/> were chosen.</summary>
public sealed record OperatingPoints
{
    /// <summary>The data the thresholds were chosen on, e.g. "out-of-fold predictions, 5-fold patient CV, 421 images".</summary>
    public required string ChosenOn { get; init; }

    /// <summary>One per class, in the manifest's class order.</summary>
    public required IReadOnlyList<OperatingPoint> Classes { get; init; }
}

/// <summary>
/// Logits to probabilities for one model: the manifest's <see cref="ProbabilityCalibration"/> when it has one, else the
/// plain sigmoid per class. Raw logits are never changed; only probabilities (and so findings) are calibrated.
/// </summary>
public sealed class ProbabilityMap
{
    private readonly PlattScaling[] _classes;

    public ProbabilityMap(ModelManifest manifest)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        _classes = manifest.Calibration is { } calibration
            ? calibration.Classes.ToArray()
            : Enumerable.Repeat(PlattScaling.Identity, manifest.ClassNames.Count).ToArray();
    }

    public int NumClasses => _classes.Length;

    /// <summary>True when a calibration is applied (not the plain sigmoid).</summary>
    public bool IsCalibrated => _classes.Any(k => k != PlattScaling.Identity);

    /// <summary>The probability of class <paramref name="classIndex"/> for its raw logit.</summary>
    public float Probability(int classIndex, float logit) => _classes[classIndex].Apply(logit);

    /// <summary>Row-major <c>N x C</c> logits to probabilities of the same shape.</summary>
    public float[] Probabilities(ReadOnlySpan<float> logits)
    {
        if (logits.Length % _classes.Length != 0)
        {
            throw new ArgumentException($"{logits.Length} logits are not rows of {_classes.Length} classes.", nameof(logits));
        }

        var result = new float[logits.Length];
        for (var i = 0; i < logits.Length; i++)
        {
            result[i] = _classes[i % _classes.Length].Apply(logits[i]);
        }

        return result;
    }

    /// <summary>The per-class (scale, offset), in class order.</summary>
    public IReadOnlyList<PlattScaling> Classes => _classes;
}
