namespace XRay.LoadTest.Load;

/// <summary>
/// Gaps between open-loop arrivals, in seconds. Poisson arrivals have exponentially distributed gaps
/// (inverse-transform sampling, -ln(1-U)/rate), so a mean rate comes with the bursts real traffic has.
/// </summary>
public abstract class ArrivalProcess
{
    protected ArrivalProcess(double ratePerSecond)
    {
        if (!(ratePerSecond > 0) || double.IsInfinity(ratePerSecond))
        {
            throw new ArgumentOutOfRangeException(nameof(ratePerSecond), ratePerSecond, "The arrival rate must be positive and finite.");
        }
        RatePerSecond = ratePerSecond;
    }

    public double RatePerSecond { get; }

    /// <summary>Seconds from the previous arrival to the next.</summary>
    public abstract double NextGapSeconds();

    public static ArrivalProcess Create(ArrivalKind kind, double ratePerSecond, int seed) => kind switch
    {
        ArrivalKind.Constant => new ConstantArrivals(ratePerSecond),
        ArrivalKind.Poisson => new PoissonArrivals(ratePerSecond, seed),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    private sealed class ConstantArrivals(double rate) : ArrivalProcess(rate)
    {
        public override double NextGapSeconds() => 1.0 / RatePerSecond;
    }

    private sealed class PoissonArrivals(double rate, int seed) : ArrivalProcess(rate)
    {
        private readonly Random _random = new(seed);

        // NextDouble is in [0, 1), so 1 - U is in (0, 1] and the logarithm is finite.
        public override double NextGapSeconds() => -Math.Log(1.0 - _random.NextDouble()) / RatePerSecond;
    }
}
