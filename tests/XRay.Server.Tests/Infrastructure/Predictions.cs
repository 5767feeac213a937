using XRay.Contracts.V1;
using XRay.Model;

namespace XRay.Server.Tests.Infrastructure;

internal static class Predictions
{
    /// <summary>
    /// The served logits equal the in-process ones up to float rounding (batches of other sizes may take other oneDNN
    /// kernels), relative to each logit's size, and each probability is the sigmoid of its logit, calibrated by
    /// <paramref name="calibration"/> when given (the served model's manifest's).
    /// </summary>
    public static void AssertMatches(float[] expectedLogits, Prediction prediction, float relativeTolerance = 1e-5f, ProbabilityMap? calibration = null)
    {
        Assert.Equal(expectedLogits.Length, prediction.Logits.Count);
        for (int c = 0; c < expectedLogits.Length; c++)
        {
            float tolerance = relativeTolerance * Math.Max(1f, Math.Abs(expectedLogits[c]));
            Assert.InRange(prediction.Logits[c], expectedLogits[c] - tolerance, expectedLogits[c] + tolerance);
            float probability = calibration?.Probability(c, prediction.Logits[c]) ?? 1f / (1f + MathF.Exp(-prediction.Logits[c]));
            Assert.InRange(prediction.Probabilities[c], probability - 1e-6f, probability + 1e-6f);
        }
    }
}
