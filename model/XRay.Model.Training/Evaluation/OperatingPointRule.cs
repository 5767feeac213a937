using System.Globalization;

namespace XRay.Model.Evaluation;

/// <summary>
/// How a class's decision threshold is chosen from scores and labels, in terms a user reads:
/// <c>max-f1</c> (optionally only among thresholds whose precision reaches a minimum: <c>max-f1:0.2</c>),
/// <c>sensitivity:0.8</c> (the highest threshold that still finds at least 80% of positives) or
/// <c>specificity:0.9</c> (the lowest threshold that still clears at least 90% of negatives).
/// Thresholds sit halfway between adjacent distinct scores, so none sits on an image.
/// </summary>
public sealed record OperatingPointRule
{
    public enum RuleKind { MaxF1, Sensitivity, Specificity }

    private OperatingPointRule(RuleKind kind, double value)
    {
        Kind = kind;
        Value = value;
    }

    public RuleKind Kind { get; }

    /// <summary>Minimum precision (<see cref="RuleKind.MaxF1"/>; 0: none) or the target rate.</summary>
    public double Value { get; }

    public static OperatingPointRule MaxF1(double minPrecision = 0) => new(RuleKind.MaxF1, CheckRate(minPrecision, "minimum precision"));

    public static OperatingPointRule Sensitivity(double target) => new(RuleKind.Sensitivity, CheckRate(target, "target sensitivity"));

    public static OperatingPointRule Specificity(double target) => new(RuleKind.Specificity, CheckRate(target, "target specificity"));

    /// <summary>Parses <c>max-f1</c>, <c>max-f1:P</c>, <c>sensitivity:X</c>, <c>specificity:X</c>.</summary>
    /// <exception cref="ArgumentException">Anything else, with the accepted forms.</exception>
    public static OperatingPointRule Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Split(':', 2, StringSplitOptions.TrimEntries);
        double? value = null;
        if (parts.Length == 2)
        {
            if (!double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var v))
            {
                throw new ArgumentException($"'{text}': '{parts[1]}' is not a number.");
            }

            value = v;
        }

        return (parts[0], value) switch
        {
            ("max-f1", var p) => MaxF1(p ?? 0),
            ("sensitivity", { } x) => Sensitivity(x),
            ("specificity", { } x) => Specificity(x),
            _ => throw new ArgumentException(
                $"'{text}' is not an operating point; use max-f1, max-f1:MIN_PRECISION, sensitivity:TARGET or specificity:TARGET (rates in [0, 1])."),
        };
    }

    /// <summary>As a person reads it, e.g. "max F1 with precision >= 0.2".</summary>
    public override string ToString() => Kind switch
    {
        RuleKind.MaxF1 when Value > 0 => $"max F1 with precision >= {Value.ToString(CultureInfo.InvariantCulture)}",
        RuleKind.MaxF1 => "max F1",
        RuleKind.Sensitivity => $"sensitivity >= {Value.ToString(CultureInfo.InvariantCulture)} (highest such threshold)",
        _ => $"specificity >= {Value.ToString(CultureInfo.InvariantCulture)} (lowest such threshold)",
    };

    /// <summary>
    /// The threshold this rule picks on <paramref name="scores"/> (predicted positive: score &gt;= threshold), and a
    /// note when the rule could not be met as asked. When no threshold reaches a max-F1 rule's minimum precision, the
    /// class is never flagged (threshold above every score, or 1 when that is above every score): a finding the model
    /// cannot call at that precision is not reported. Without positives or negatives: 0.5 and a note.
    /// </summary>
    public (float Threshold, string? Note) Choose(ReadOnlySpan<float> scores, ReadOnlySpan<float> labels)
    {
        if (scores.Length != labels.Length)
        {
            throw new ArgumentException($"{scores.Length} scores but {labels.Length} labels.", nameof(labels));
        }

        var pairs = new List<(float Score, bool Positive)>();
        for (var i = 0; i < scores.Length; i++)
        {
            if (!float.IsNaN(labels[i]))
            {
                pairs.Add((scores[i], labels[i] >= 0.5f));
            }
        }

        var positives = pairs.Count(p => p.Positive);
        var negatives = pairs.Count - positives;
        if (positives == 0 || negatives == 0)
        {
            return (0.5f, "no positive or no negative to choose on: 0.5");
        }

        pairs.Sort((p, q) => q.Score.CompareTo(p.Score));
        // Cuts: after each group of tied scores, everything so far is predicted positive.
        int tp = 0, fp = 0;
        var best = -1;
        var bestValue = double.NegativeInfinity;
        int? firstMeetingSpecificity = null;
        for (var end = 0; end < pairs.Count; end++)
        {
            if (pairs[end].Positive) tp++;
            else fp++;
            if (end + 1 < pairs.Count && pairs[end + 1].Score == pairs[end].Score)
            {
                continue;
            }

            var sensitivity = (double)tp / positives;
            var specificity = (double)(negatives - fp) / negatives;
            var precision = (double)tp / (tp + fp);
            switch (Kind)
            {
                case RuleKind.MaxF1:
                    var f1 = 2.0 * tp / (tp + fp + positives);
                    if (precision >= Value && f1 > bestValue)
                    {
                        bestValue = f1;
                        best = end;
                    }

                    break;
                case RuleKind.Sensitivity:
                    if (sensitivity >= Value && best < 0)
                    {
                        best = end;
                    }

                    break;
                case RuleKind.Specificity:
                    if (specificity >= Value)
                    {
                        firstMeetingSpecificity = end;
                    }

                    break;
            }
        }

        if (Kind == RuleKind.Specificity)
        {
            best = firstMeetingSpecificity ?? -1;
        }

        if (best < 0)
        {
            // Nothing predicted positive: a threshold above the highest score.
            var top = pairs[0].Score;
            var never = top < 1f ? 1f : MathF.BitIncrement(top);
            return (never, Kind == RuleKind.MaxF1
                ? $"no threshold reaches precision {Value.ToString(CultureInfo.InvariantCulture)}: never flagged"
                : "the target holds only with nothing flagged");
        }

        var chosen = pairs[best].Score;
        var next = best + 1 < pairs.Count ? pairs[best + 1].Score : chosen;
        var threshold = (chosen + next) / 2f;
        // The midpoint of adjacent floats can round onto either end; the chosen score itself is then the threshold.
        return (threshold > next && threshold <= chosen ? threshold : chosen, null);
    }

    private static double CheckRate(double value, string what) =>
        value is >= 0 and <= 1 ? value : throw new ArgumentException($"The {what} must be in [0, 1]; got {value.ToString(CultureInfo.InvariantCulture)}.");
}
