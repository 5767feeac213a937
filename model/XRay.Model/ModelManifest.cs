using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace XRay.Model;

/// <summary>
/// The <c>manifest.json</c> of a checkpoint: what the network is, what its outputs mean and how its input
/// must be prepared. Serialised with <see cref="JsonOptions"/> (camelCase).
/// </summary>
public sealed record ModelManifest
{
    /// <summary>Options for reading and writing manifests: camelCase names, indented, case-insensitive on read.</summary>
    public static JsonSerializerOptions JsonOptions { get; } = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public required string Name { get; init; }

    public required string Version { get; init; }

    /// <summary>One of <see cref="Architectures.Names"/>.</summary>
    public required string Architecture { get; init; }

    /// <summary>Output order of the network's logits.</summary>
    public required IReadOnlyList<string> ClassNames { get; init; }

    /// <summary>Per class decision threshold on the probability; null means 0.5 for every class.</summary>
    public IReadOnlyList<float>? Thresholds { get; init; }

    /// <summary>
    /// How the thresholds were chosen, per class (rule, and what it gave on the data it was chosen on); null when the
    /// manifest does not say.
    /// </summary>
    public OperatingPoints? OperatingPoints { get; init; }

    /// <summary>Per-class probability calibration applied to the logits; null means the plain sigmoid.</summary>
    public ProbabilityCalibration? Calibration { get; init; }

    public PreprocessingSpec Preprocessing { get; init; } = new();

    /// <summary>
    /// Null: <c>weights.bin</c> holds every tensor. <see cref="BaseWeightsImageNetCntk"/>: it holds only the tensors that
    /// differ from CNTK's ImageNet ResNet-18 (imported from the ONNX file the build copies beside the program); the rest
    /// are taken from there. Only for <see cref="Architectures.ResNet18Cntk"/> and <see cref="Architectures.ResNet18CntkGray"/>.
    /// </summary>
    public string? BaseWeights { get; init; }

    /// <summary>The one base <see cref="BaseWeights"/> can name.</summary>
    public const string BaseWeightsImageNetCntk = "resnet18-imagenet-cntk";

    /// <summary>What the model was trained on and what it is (not) for.</summary>
    public string Description { get; init; } = "";

    /// <summary>How it was trained (data, epochs, metrics); free form.</summary>
    public JsonObject? Training { get; init; }

    /// <summary><see cref="Thresholds"/>, or 0.5 per class when absent. Throws when their count differs from the classes'.</summary>
    [JsonIgnore]
    public IReadOnlyList<float> EffectiveThresholds
    {
        get
        {
            if (Thresholds is null)
            {
                return Array.AsReadOnly(Enumerable.Repeat(0.5f, ClassNames.Count).ToArray());
            }

            if (Thresholds.Count != ClassNames.Count)
            {
                throw new InvalidOperationException(
                    $"Manifest '{Name}' has {Thresholds.Count} thresholds for {ClassNames.Count} classes.");
            }

            return Thresholds;
        }
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(Name))
        {
            throw new ArgumentException("Manifest name must not be empty.");
        }

        if (string.IsNullOrWhiteSpace(Version))
        {
            throw new ArgumentException($"Manifest '{Name}': version must not be empty.");
        }

        if (!Architectures.Names.Contains(Architecture))
        {
            throw new ArgumentException(
                $"Manifest '{Name}': unknown architecture '{Architecture}'; known: {string.Join(", ", Architectures.Names)}.");
        }

        if (ClassNames is null || ClassNames.Count == 0)
        {
            throw new ArgumentException($"Manifest '{Name}': classNames must not be empty.");
        }

        if (ClassNames.Any(string.IsNullOrWhiteSpace))
        {
            throw new ArgumentException($"Manifest '{Name}': classNames must not contain empty names.");
        }

        var duplicate = ClassNames.GroupBy(c => c, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new ArgumentException($"Manifest '{Name}': class name '{duplicate.Key}' appears more than once.");
        }

        if (Thresholds is not null)
        {
            if (Thresholds.Count != ClassNames.Count)
            {
                throw new ArgumentException(
                    $"Manifest '{Name}': {Thresholds.Count} thresholds for {ClassNames.Count} classes.");
            }

            for (var i = 0; i < Thresholds.Count; i++)
            {
                if (!(Thresholds[i] >= 0f && Thresholds[i] <= 1f))
                {
                    throw new ArgumentException(
                        $"Manifest '{Name}': threshold for '{ClassNames[i]}' is {Thresholds[i]}; it must be a probability in [0, 1].");
                }
            }
        }

        if (Calibration is not null)
        {
            try
            {
                Calibration.Validate(ClassNames);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"Manifest '{Name}': {e.Message}", e);
            }
        }

        if (OperatingPoints is not null)
        {
            if (OperatingPoints.Classes is null || !OperatingPoints.Classes.Select(p => p?.Class).SequenceEqual(ClassNames))
            {
                throw new ArgumentException($"Manifest '{Name}': operatingPoints must list the classes in the manifest's order.");
            }

            if (Thresholds is null || OperatingPoints.Classes.Where((p, i) => p.Threshold != Thresholds[i]).Any())
            {
                throw new ArgumentException($"Manifest '{Name}': operatingPoints' thresholds differ from thresholds.");
            }
        }

        if (Preprocessing is null)
        {
            throw new ArgumentException($"Manifest '{Name}': preprocessing must not be null.");
        }

        Preprocessing.Validate();
        if (BaseWeights is not null && (BaseWeights != BaseWeightsImageNetCntk || Architecture is not (Architectures.ResNet18Cntk or Architectures.ResNet18CntkGray)))
        {
            throw new ArgumentException(
                $"Manifest '{Name}': baseWeights '{BaseWeights}' is not supported for '{Architecture}'; the only base is " +
                $"'{BaseWeightsImageNetCntk}', for {Architectures.ResNet18Cntk} and {Architectures.ResNet18CntkGray}.");
        }

        var channels = Architectures.InputChannels(Architecture);
        if (Preprocessing.Channels != channels)
        {
            throw new ArgumentException(
                $"Manifest '{Name}': architecture '{Architecture}' takes {channels}-channel input but preprocessing color " +
                $"'{Preprocessing.Color}' gives {Preprocessing.Channels}.");
        }
    }

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>Parses a manifest; throws <see cref="JsonException"/> for malformed JSON or missing required fields. Does not <see cref="Validate"/>.</summary>
    public static ModelManifest FromJson(string json) =>
        JsonSerializer.Deserialize<ModelManifest>(json, JsonOptions)
        ?? throw new JsonException("The manifest is JSON null.");
}
