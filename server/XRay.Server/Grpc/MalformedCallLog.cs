using Grpc.Core;

namespace XRay.Server.Grpc;

/// <summary>
/// One warning line per malformed call (not protobuf, bad prefix, oversized, too slow), within the refusal lines'
/// <see cref="LogBudget"/>: a client sending garbage in a loop costs the log a few lines a second, the lines left out
/// counted in the next one. The text is the server's own (status and a fixed description), never the caller's bytes.
/// </summary>
public sealed partial class MalformedCallLog(LogBudget budget, ILogger<MalformedCallLog> logger)
{
    public void Write(string service, string method, StatusCode statusCode, string detail)
    {
        if (budget.TryTake(out long skipped))
        {
            LogMalformed(logger, service, method, statusCode, detail, skipped);
        }
    }

    /// <summary>grpc-dotnet's own logging of such calls stays below warning.</summary>
    [LoggerMessage(EventId = 20, Level = LogLevel.Warning,
        Message = "Malformed call to {Service}/{Method}: {StatusCode} {Detail} ({Skipped} more refusals not logged before this one)")]
    private static partial void LogMalformed(ILogger logger, string service, string method, StatusCode statusCode, string detail, long skipped);
}
