using System.Globalization;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using XRay.Batching;
using XRay.Server.Model;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>
/// Refuses a unary <c>Classify</c> call from its headers alone, before a byte of its message is read, when the queue
/// could not take even one image, or when the call's deadline (<c>grpc-timeout</c>) is shorter than the estimated wait
/// for one image (<see cref="DynamicBatcher{TInput, TOutput}.EstimatedWait"/>). The answer is a trailers-only
/// RESOURCE_EXHAUSTED; the unread message is discarded by the transport. Under overload most calls end here, so a
/// refusal costs no parsing, no copy of the message and no exception. Calls it lets through are admitted (or refused)
/// again with their real image count by the batcher; streams are admitted per message by the service.
/// </summary>
public sealed partial class HeaderAdmission(ModelHost host, XRayMetrics metrics, LogBudget logBudget, TimeProvider time, ILogger<HeaderAdmission> logger)
{
    private const string ClassifyMethod = "Classify";
    private static readonly string ServiceName = XRay.Contracts.V1.Classifier.Descriptor.FullName;

    /// <summary>
    /// Whether the call was refused (and answered); false lets it through. <paramref name="method"/>: the gRPC method
    /// the call was routed to, if any.
    /// </summary>
    public bool TryRefuse(HttpContext context, GrpcMethodMetadata? method)
    {
        if (method is null || method.Method.Name != ClassifyMethod || method.Method.ServiceName != ServiceName
            || host.Current is not { } model)
        {
            return false;
        }
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        DateTimeOffset? deadline = null;
        if (context.Request.Headers["grpc-timeout"] is { Count: 1 } timeout && ParseTimeout(timeout[0]) is { } left)
        {
            deadline = time.GetUtcNow() + left;
        }
        if (model.Batcher.WouldAdmit(1, deadline, out RejectionReason reason, out string? message))
        {
            return false;
        }
        Status status = GrpcErrors.Rejected(reason, message!);
        metrics.RequestRejected(GrpcErrors.ReasonName(reason));
        metrics.RecordRequest(ClassifierMethods.Classify, model.Manifest.Name, status.StatusCode, started);

        // Trailers-only: HTTP 200 with the gRPC status in the headers and no message.
        HttpResponse response = context.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "application/grpc";
        response.Headers["grpc-status"] = ((int)status.StatusCode).ToString(CultureInfo.InvariantCulture);
        response.Headers["grpc-message"] = PercentEncode(status.Detail);
        if (logBudget.TryTake(out long skipped))
        {
            LogRefused(logger, status.StatusCode, status.Detail, skipped);
        }
        return true;
    }

    /// <summary>
    /// A <c>grpc-timeout</c> value (at most 8 digits and a unit: H, M, S, m, u, n), or null when it is not one; a
    /// malformed header is left to grpc-dotnet to refuse.
    /// </summary>
    public static TimeSpan? ParseTimeout(string? value)
    {
        if (value is null || value.Length < 2 || value.Length > 9
            || !long.TryParse(value.AsSpan(0, value.Length - 1), NumberStyles.None, CultureInfo.InvariantCulture, out long amount))
        {
            return null;
        }
        return value[^1] switch
        {
            'H' => TimeSpan.FromHours(amount),
            'M' => TimeSpan.FromMinutes(amount),
            'S' => TimeSpan.FromSeconds(amount),
            'm' => TimeSpan.FromMilliseconds(amount),
            'u' => TimeSpan.FromMicroseconds(amount),
            'n' => TimeSpan.FromTicks(amount / 100),
            _ => null,
        };
    }

    /// <summary>grpc-message is percent-encoded: printable ASCII except '%' as is, every other byte of UTF-8 as %XX.</summary>
    internal static string PercentEncode(string message)
    {
        var text = new System.Text.StringBuilder(message.Length);
        foreach (byte b in System.Text.Encoding.UTF8.GetBytes(message))
        {
            if (b is >= 0x20 and <= 0x7E && b != (byte)'%')
            {
                text.Append((char)b);
            }
            else
            {
                text.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
            }
        }
        return text.ToString();
    }

    [LoggerMessage(EventId = 22, Level = LogLevel.Information,
        Message = "Classify call refused before its message was read: {StatusCode} {Detail} ({Skipped} more refusals not logged before this one)")]
    private static partial void LogRefused(ILogger logger, StatusCode statusCode, string detail, long skipped);
}
