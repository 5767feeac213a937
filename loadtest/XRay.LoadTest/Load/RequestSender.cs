using Grpc.Core;
using XRay.Client;
using XRay.Contracts.V1;

namespace XRay.LoadTest.Load;

/// <summary>
/// Sends requests over <see cref="LoadProfile.Connections"/> gRPC channels (one HTTP/2 connection each; with
/// several targets each channel balances round-robin over them), unary or on one stream per channel.
/// </summary>
internal sealed class RequestSender : IAsyncDisposable
{
    private readonly XRayClassifierClient[] _clients;
    private readonly ClassifyStreamSession[]? _streams;
    private readonly TimeSpan _timeout;

    private RequestSender(XRayClassifierClient[] clients, ClassifyStreamSession[]? streams, TimeSpan timeout)
    {
        _clients = clients;
        _streams = streams;
        _timeout = timeout;
    }

    public int Connections => _clients.Length;

    public static RequestSender Create(IReadOnlyList<string> targets, LoadProfile profile)
    {
        XRayClientOptions options = profile.Client.Clone();
        options.Timeout = profile.Timeout;
        options.MaxAttempts = 1;
        var clients = Enumerable.Range(0, profile.Connections).Select(_ => new XRayClassifierClient(targets, options)).ToArray();
        // Streams live for the whole run, so they have no deadline; each request has its own timeout instead.
        ClassifyStreamSession[]? streams = profile.Api == CallApi.Stream ? clients.Select(client => client.OpenStream()).ToArray() : null;
        return new RequestSender(clients, streams, profile.Timeout);
    }

    /// <summary>Sends on connection <paramref name="slot"/> mod Connections; failures are <see cref="RpcException"/>s.</summary>
    public async Task<ClassifyResponse> SendAsync(ClassifyRequest request, long slot, CancellationToken cancellationToken)
    {
        int connection = (int)((ulong)slot % (ulong)_clients.Length);
        if (_streams is null)
        {
            return await _clients[connection].ClassifyAsync(request, cancellationToken).ConfigureAwait(false);
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_timeout);
        try
        {
            return await _streams[connection].ClassifyAsync(request, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.DeadlineExceeded, $"no response on the stream within {_timeout.TotalSeconds} s"));
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_streams is not null)
        {
            foreach (ClassifyStreamSession stream in _streams)
            {
                try
                {
                    await stream.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is TimeoutException or RpcException or OperationCanceledException)
                {
                    // The stream is torn down with its channel below.
                }
            }
        }
        foreach (XRayClassifierClient client in _clients) client.Dispose();
    }
}
