using Grpc.Core;
using XRay.Client;
using XRay.Contracts.Inference;
using XRay.Contracts.V1;

namespace XRay.LoadTest.Load;

/// <summary>
/// Sends requests over <see cref="LoadProfile.Connections"/> gRPC channels (one HTTP/2 connection each; with
/// several targets each channel balances round-robin over them), unary or on one stream per channel, through xray.v1
/// or the Open Inference Protocol (the same images; its answers read back as xray.v1 responses).
/// </summary>
internal sealed class RequestSender : IAsyncDisposable
{
    private readonly XRayClassifierClient[] _clients;
    private readonly ClassifyStreamSession[]? _streams;
    private readonly InferenceStreamSession[]? _inferenceStreams;
    private readonly string? _inferenceModel;
    private readonly TimeSpan _timeout;

    private RequestSender(XRayClassifierClient[] clients, ClassifyStreamSession[]? streams, InferenceStreamSession[]? inferenceStreams,
        string? inferenceModel, TimeSpan timeout)
    {
        _clients = clients;
        _streams = streams;
        _inferenceStreams = inferenceStreams;
        _inferenceModel = inferenceModel;
        _timeout = timeout;
    }

    public int Connections => _clients.Length;

    public static async Task<RequestSender> CreateAsync(IReadOnlyList<string> targets, LoadProfile profile, CancellationToken cancellationToken)
    {
        XRayClientOptions options = profile.Client.Clone();
        options.Timeout = profile.Timeout;
        options.MaxAttempts = 1;
        var clients = Enumerable.Range(0, profile.Connections).Select(_ => new XRayClassifierClient(targets, options)).ToArray();
        // The Open Inference Protocol names the model in every request: the served one, as GetModelInfo reports it.
        string? model = profile.Api is CallApi.Kserve or CallApi.KserveStream
            ? (await clients[0].GetModelInfoAsync(cancellationToken).ConfigureAwait(false)).Name
            : null;
        // Streams live for the whole run, so they have no deadline; each request has its own timeout instead.
        ClassifyStreamSession[]? streams = profile.Api == CallApi.Stream ? clients.Select(client => client.OpenStream()).ToArray() : null;
        InferenceStreamSession[]? inferenceStreams = profile.Api == CallApi.KserveStream
            ? clients.Select(client => client.OpenInferenceStream()).ToArray()
            : null;
        return new RequestSender(clients, streams, inferenceStreams, model, profile.Timeout);
    }

    /// <summary>Sends on connection <paramref name="slot"/> mod Connections; failures are <see cref="RpcException"/>s.</summary>
    public async Task<ClassifyResponse> SendAsync(ClassifyRequest request, long slot, CancellationToken cancellationToken)
    {
        int connection = (int)((ulong)slot % (ulong)_clients.Length);
        if (_streams is null && _inferenceStreams is null)
        {
            return _inferenceModel is null
                ? await _clients[connection].ClassifyAsync(request, cancellationToken).ConfigureAwait(false)
                : OpenInference.ToClassifyResponse(await _clients[connection].InferAsync(OpenInference.From(request, _inferenceModel), cancellationToken).ConfigureAwait(false));
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_timeout);
        try
        {
            if (_inferenceStreams is not null)
            {
                ModelInferResponse inferred = await _inferenceStreams[connection].InferAsync(OpenInference.From(request, _inferenceModel!), timeout.Token).ConfigureAwait(false);
                return OpenInference.ToClassifyResponse(inferred);
            }
            return await _streams![connection].ClassifyAsync(request, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.DeadlineExceeded, $"no response on the stream within {_timeout.TotalSeconds} s"));
        }
    }

    public async ValueTask DisposeAsync()
    {
        IEnumerable<IAsyncDisposable> streams = [.. _streams ?? [], .. _inferenceStreams ?? []];
        {
            foreach (IAsyncDisposable stream in streams)
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
