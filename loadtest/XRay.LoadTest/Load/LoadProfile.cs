using XRay.Client;
namespace XRay.LoadTest.Load;

/// <summary>Closed loop: a fixed number of callers, each sending its next request when the last one is answered. Open loop: requests arrive at a rate, whatever the server does.</summary>
public enum LoadMode
{
    Closed,
    Open,
}

/// <summary>How open-loop arrivals are spaced: evenly, or as a Poisson process (exponential gaps; bursts as real traffic has).</summary>
public enum ArrivalKind
{
    Constant,
    Poisson,
}

/// <summary>
/// Which API carries the load: xray.v1 unary <c>Classify</c> calls or requests multiplexed on one <c>ClassifyStream</c> per
/// connection; or the Open Inference Protocol (KServe v2), unary <c>ModelInfer</c> or one <c>ModelStreamInfer</c> per
/// connection, with the same images.
/// </summary>
public enum CallApi
{
    Unary,
    Stream,
    Kserve,
    KserveStream,
}

public static class CallApis
{
    private static readonly (CallApi Api, string Name)[] Names =
        [(CallApi.Unary, "unary"), (CallApi.Stream, "stream"), (CallApi.Kserve, "kserve"), (CallApi.KserveStream, "kserve-stream")];

    /// <summary>The name <c>--api</c> takes and reports show: unary, stream, kserve, kserve-stream.</summary>
    public static string Name(this CallApi api) => Names.First(entry => entry.Api == api).Name;

    /// <exception cref="ArgumentException">Not one of the names.</exception>
    public static CallApi Parse(string value, string option) =>
        Names.FirstOrDefault(entry => string.Equals(entry.Name, value, StringComparison.OrdinalIgnoreCase)) is { Name: not null } found
            ? found.Api
            : throw new ArgumentException($"{option} must be one of {string.Join(", ", Names.Select(entry => entry.Name))}; got '{value}'.");
}

/// <summary>The shape of one load run. Validate with <see cref="Validate"/>.</summary>
public sealed record LoadProfile
{
    public LoadMode Mode { get; init; } = LoadMode.Closed;

    /// <summary>Closed loop: callers in flight (default 8).</summary>
    public int Concurrency { get; init; } = 8;

    /// <summary>Open loop: requests per second.</summary>
    public double RateRps { get; init; }

    /// <summary>Open loop: arrival spacing (default Poisson).</summary>
    public ArrivalKind Arrival { get; init; } = ArrivalKind.Poisson;

    /// <summary>How long to measure after the warm-up (default 10 s); ignored when <see cref="Requests"/> is set.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Measure exactly this many requests after the warm-up, instead of a duration.</summary>
    public long? Requests { get; init; }

    /// <summary>Load applied but not recorded before measuring (default 2 s): connections, JIT, the server's first batches.</summary>
    public TimeSpan Warmup { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>HTTP/2 connections (one gRPC channel each) the load is spread over (default 1).</summary>
    public int Connections { get; init; } = 1;

    public CallApi Api { get; init; } = CallApi.Unary;

    /// <summary>TLS trust, client certificate and token or API key for the targets (default none); timeouts and retries are set per use.</summary>
    public XRayClientOptions Client { get; init; } = new();

    /// <summary>Deadline of each request (default 30 s).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Open loop: requests outstanding at most; arrivals beyond it are dropped and counted (default 10000).</summary>
    public int MaxInFlight { get; init; } = 10_000;

    /// <summary>Seeds the Poisson arrivals (default 1).</summary>
    public int Seed { get; init; } = 1;

    /// <summary>"c=8" or "r=50/s": the load level, for tables and plots.</summary>
    public string Label => Mode == LoadMode.Closed ? $"c={Concurrency}" : $"r={RateRps:0.##}/s";

    /// <summary>The load level as a number: concurrency or rate.</summary>
    public double Level => Mode == LoadMode.Closed ? Concurrency : RateRps;

    /// <exception cref="ArgumentException">Naming the first setting out of range.</exception>
    public void Validate()
    {
        if (Mode == LoadMode.Closed && Concurrency is < 1 or > 100_000) throw new ArgumentException($"concurrency must be in [1, 100000]; got {Concurrency}.");
        if (Mode == LoadMode.Open && !(RateRps > 0 && RateRps <= 1_000_000)) throw new ArgumentException($"an open-loop run needs a rate in (0, 1000000] requests/s; got {RateRps}.");
        if (Requests is null && Duration <= TimeSpan.Zero) throw new ArgumentException($"duration must be positive; got {Duration.TotalSeconds} s.");
        if (Requests is < 1) throw new ArgumentException($"requests must be at least 1; got {Requests}.");
        if (Warmup < TimeSpan.Zero) throw new ArgumentException($"warm-up must not be negative; got {Warmup.TotalSeconds} s.");
        if (Connections is < 1 or > 1024) throw new ArgumentException($"connections must be in [1, 1024]; got {Connections}.");
        if (Timeout <= TimeSpan.Zero) throw new ArgumentException($"timeout must be positive; got {Timeout.TotalSeconds} s.");
        if (MaxInFlight < 1) throw new ArgumentException($"max in flight must be at least 1; got {MaxInFlight}.");
    }
}
