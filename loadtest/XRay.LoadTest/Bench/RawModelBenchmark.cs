using System.Globalization;
using System.Text.Json;
using XRay.Contracts.V1;
using XRay.LoadTest.Statistics;

namespace XRay.LoadTest.Bench;

/// <summary>One batch size of the raw model: forwards back to back in one process, without gRPC or batcher.</summary>
public sealed record RawPoint
{
    public required int BatchSize { get; init; }
    public required int Iterations { get; init; }
    public required double ImagesPerS { get; init; }
    /// <summary>Time of one forward of the whole batch.</summary>
    public required LatencySummary ForwardMs { get; init; }
}

/// <summary>What one raw run measured: the model as loaded, the allocator under it, its preprocessing, and the points.</summary>
internal sealed record RawRun(ModelSummary Model, string Allocator, Preprocessing Preprocessing, IReadOnlyList<RawPoint> Points);

/// <summary>
/// The limit: the model's throughput at each batch size with nothing around it, through the same ModelRunner (one
/// inference thread, inference mode) the server runs it with. Measured by <c>xray-train raw-benchmark</c> in a child
/// process, so this tool needs no libtorch; its JSON carries every forward's time, summarised here.
/// </summary>
internal static class RawModelBenchmark
{
    private static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web) { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>The xray-train arguments for one raw run.</summary>
    /// <param name="modelPath">Checkpoint folder; null: the built-in default model (or <paramref name="architecture"/>).</param>
    /// <param name="architecture">An untrained network of this architecture, saved to <paramref name="saveTo"/> first.</param>
    public static string[] Arguments(string? modelPath, string? architecture, string? saveTo, string runtime, string device, string precision,
        IReadOnlyList<int> batchSizes, double minSeconds, int minIterations) =>
    [
        "raw-benchmark",
        .. modelPath is null ? Array.Empty<string>() : ["--model", Path.GetFullPath(modelPath)],
        .. architecture is null ? Array.Empty<string>() : ["--architecture", architecture, "--save-checkpoint", saveTo!],
        "--runtime", runtime,
        "--device", device,
        "--precision", precision,
        "--batch-sizes", string.Join(',', batchSizes),
        "--seconds", minSeconds.ToString(CultureInfo.InvariantCulture),
        "--iterations", minIterations.ToString(CultureInfo.InvariantCulture),
    ];

    /// <summary>Runs xray-train with <paramref name="arguments"/>; its progress lines go to <paramref name="log"/>.</summary>
    /// <exception cref="InvalidOperationException">It failed; the message has its last output.</exception>
    public static async Task<RawRun> RunAsync(string trainPath, IReadOnlyList<string> arguments, Action<string>? log, CancellationToken cancellationToken)
    {
        string json = await ToolProcess.RunAsync(trainPath, arguments, log, cancellationToken).ConfigureAwait(false);
        return Parse(json);
    }

    /// <summary>The raw-benchmark JSON as this tool's records: forward times summarised like every other latency.</summary>
    internal static RawRun Parse(string json)
    {
        using JsonDocument document = JsonDocument.Parse(json);
        JsonElement root = document.RootElement;
        JsonElement pre = root.GetProperty("preprocessing");
        var preprocessing = new Preprocessing
        {
            ResizeSize = pre.GetProperty("resize_size").GetInt32(),
            CropSize = pre.GetProperty("crop_size").GetInt32(),
            Color = pre.GetProperty("color").GetString() ?? "",
        };
        preprocessing.Mean.AddRange(pre.GetProperty("mean").EnumerateArray().Select(v => v.GetSingle()));
        preprocessing.Std.AddRange(pre.GetProperty("std").EnumerateArray().Select(v => v.GetSingle()));
        var points = new List<RawPoint>();
        foreach (JsonElement point in root.GetProperty("points").EnumerateArray())
        {
            int batchSize = point.GetProperty("batch_size").GetInt32();
            var forwards = new LatencyRecorder();
            foreach (JsonElement us in point.GetProperty("forward_us").EnumerateArray()) forwards.Record(us.GetInt64());
            points.Add(new RawPoint
            {
                BatchSize = batchSize,
                Iterations = (int)forwards.Count,
                ImagesPerS = Math.Round(batchSize * forwards.Count / point.GetProperty("seconds").GetDouble(), 2),
                ForwardMs = forwards.Summarize(),
            });
        }
        return new RawRun(
            root.GetProperty("model").Deserialize<ModelSummary>(JsonOptions) ?? throw new InvalidDataException("raw-benchmark output has no model."),
            root.GetProperty("allocator").GetString() ?? "",
            preprocessing,
            points);
    }

    /// <summary>
    /// Raw images/s at any batch size: forward time interpolated linearly between the measured sizes
    /// (extrapolated flat in images/s beyond them).
    /// </summary>
    public static double ImagesPerSecondAt(IReadOnlyList<RawPoint> points, double batchSize)
    {
        if (points.Count == 0) throw new ArgumentException("No raw measurements.", nameof(points));
        var sorted = points.OrderBy(p => p.BatchSize).ToArray();
        if (batchSize <= sorted[0].BatchSize) return sorted[0].ImagesPerS;
        if (batchSize >= sorted[^1].BatchSize) return sorted[^1].ImagesPerS;
        for (int i = 1; i < sorted.Length; i++)
        {
            if (batchSize > sorted[i].BatchSize) continue;
            RawPoint lo = sorted[i - 1], hi = sorted[i];
            double tLo = lo.BatchSize / lo.ImagesPerS, tHi = hi.BatchSize / hi.ImagesPerS;
            double f = (batchSize - lo.BatchSize) / (hi.BatchSize - lo.BatchSize);
            return batchSize / (tLo + f * (tHi - tLo));
        }
        return sorted[^1].ImagesPerS;
    }

    /// <summary>
    /// Raw images/s for the mix of batch sizes the server ran: each image costs its batch's raw forward time
    /// divided by the batch size, so this is images / sum over images of 1 / raw_images_per_s(size).
    /// </summary>
    public static double ImagesPerSecondForMix(IReadOnlyList<RawPoint> points, IReadOnlyDictionary<int, long> imagesByBatchSize)
    {
        double images = 0, seconds = 0;
        foreach (var (size, count) in imagesByBatchSize)
        {
            images += count;
            seconds += count / ImagesPerSecondAt(points, size);
        }
        return seconds == 0 ? 0 : images / seconds;
    }
}
