using System.Buffers.Binary;
using System.Net;
using System.Net.Http.Headers;
using Google.Protobuf;
using Grpc.Core;

namespace XRay.Server.Tests.Infrastructure;

/// <summary>
/// gRPC calls built by hand over a plain HTTP/2 HttpClient: any bytes as the body, any message prefix, so that tests can
/// send what no generated client would.
/// </summary>
internal sealed class RawGrpc(string address) : IDisposable
{
    private readonly HttpClient _http = new(new SocketsHttpHandler()) { BaseAddress = new Uri(address), Timeout = TestServer.Timeout };

    public const string Classify = "/xray.v1.Classifier/Classify";
    public const string ClassifyStream = "/xray.v1.Classifier/ClassifyStream";

    /// <summary>A message prefix (compressed flag, big-endian length) followed by <paramref name="payload"/>.</summary>
    public static byte[] Frame(ReadOnlySpan<byte> payload, byte flag = 0, uint? length = null)
    {
        var frame = new byte[5 + payload.Length];
        frame[0] = flag;
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), length ?? (uint)payload.Length);
        payload.CopyTo(frame.AsSpan(5));
        return frame;
    }

    public static byte[] Frame(IMessage message) => Frame(message.ToByteArray());

    /// <summary>Sends <paramref name="body"/> as a whole request and returns the call's gRPC status and the response messages.</summary>
    public Task<RawResult> CallAsync(string path, byte[] body, long? contentLength = null, params (string Name, string Value)[] headers) =>
        CallAsync(path, new ByteArrayContent(body), contentLength, headers);

    public async Task<RawResult> CallAsync(string path, HttpContent content, long? contentLength = null, params (string Name, string Value)[] headers)
    {
        content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        if (contentLength is { } length) content.Headers.ContentLength = length;
        using var request = new HttpRequestMessage(HttpMethod.Post, path)
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = content,
        };
        request.Headers.TryAddWithoutValidation("te", "trailers");
        foreach (var (name, value) in headers) request.Headers.TryAddWithoutValidation(name, value);
        using HttpResponseMessage response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).WaitAsync(TestServer.Timeout);
        byte[] body = await response.Content.ReadAsByteArrayAsync().WaitAsync(TestServer.Timeout);
        // A trailers-only response carries the status in its headers.
        string? status = Header(response.Headers, "grpc-status") ?? Header(response.TrailingHeaders, "grpc-status");
        string message = Uri.UnescapeDataString(Header(response.Headers, "grpc-message") ?? Header(response.TrailingHeaders, "grpc-message") ?? "");
        Assert.True(status is not null, $"HTTP {(int)response.StatusCode} without grpc-status");
        return new RawResult((StatusCode)int.Parse(status!, System.Globalization.CultureInfo.InvariantCulture), message, Messages(body));
    }

    private static string? Header(HttpHeaders headers, string name) =>
        headers.TryGetValues(name, out var values) ? values.FirstOrDefault() : null;

    private static List<byte[]> Messages(byte[] body)
    {
        var messages = new List<byte[]>();
        for (int offset = 0; offset + 5 <= body.Length;)
        {
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(body.AsSpan(offset + 1));
            messages.Add(body.AsSpan(offset + 5, length).ToArray());
            offset += 5 + length;
        }
        return messages;
    }

    public void Dispose() => _http.Dispose();
}

internal sealed record RawResult(StatusCode Status, string Message, IReadOnlyList<byte[]> Messages);
