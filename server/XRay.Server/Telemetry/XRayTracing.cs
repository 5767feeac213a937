using System.Diagnostics;

namespace XRay.Server.Telemetry;

/// <summary>
/// The server's spans. ASP.NET Core makes the span of each RPC (continuing the caller's W3C <c>traceparent</c>);
/// this source adds one span per ClassifyStream message and one per executed batch. A batch serves several
/// requests from several traces, so its span is a root linked to each request's span, as OpenTelemetry's
/// messaging conventions do for batch processing.
/// </summary>
public static class XRayTracing
{
    public const string SourceName = "XRay.Server";
    public const string BatchSpanName = "xray.batch";
    public const string StreamMessageSpanName = "xray.v1.Classifier/ClassifyStream message";

    public const string RequestIdTag = "xray.request.id";
    public const string ImagesTag = "xray.request.images";
    public const string BatchSizeTag = "xray.batch.size";
    public const string BatchRequestsTag = "xray.batch.requests";

    internal static readonly ActivitySource Source = new(SourceName);

    /// <summary>Starts the span of one batch, linked to the (distinct, valid) spans of the requests it serves.</summary>
    internal static Activity? StartBatch(int batchSize, IEnumerable<ActivityContext> requests)
    {
        if (!Source.HasListeners())
        {
            return null;
        }
        var links = new List<ActivityLink>();
        foreach (ActivityContext request in requests.Where(context => context != default).Distinct())
        {
            links.Add(new ActivityLink(request));
        }
        // A root: with no explicit parent, StartActivity would adopt whatever span is current on this thread.
        Activity.Current = null;
        var tags = new ActivityTagsCollection { [BatchSizeTag] = batchSize, [BatchRequestsTag] = links.Count };
        return Source.StartActivity(BatchSpanName, ActivityKind.Internal, parentContext: default, tags, links);
    }
}
