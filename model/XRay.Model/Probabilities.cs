namespace XRay.Model;

/// <summary>Logit to probability helpers (the networks output raw logits, one independent sigmoid per finding).</summary>
public static class Probabilities
{
    /// <summary>The logistic function, written so that neither branch overflows for large |x|.</summary>
    public static float Sigmoid(float logit)
    {
        if (logit >= 0)
        {
            return 1f / (1f + MathF.Exp(-logit));
        }

        var e = MathF.Exp(logit);
        return e / (1f + e);
    }
}
