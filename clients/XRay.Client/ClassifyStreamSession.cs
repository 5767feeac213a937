using System.Collections.Concurrent;
using Grpc.Core;
using XRay.Contracts.V1;

namespace XRay.Client;

/// <summary>
/// One ClassifyStream call with many requests in flight: each <see cref="ClassifyAsync"/> completes when the
/// response with its request_id arrives (responses may come back in any order).
/// </summary>
public sealed class ClassifyStreamSession : IAsyncDisposable
{
    private readonly AsyncDuplexStreamingCall<ClassifyRequest, ClassifyResponse> _call;
    private readonly ConcurrentDictionary<string, TaskCompletionSource<ClassifyResponse>> _pending = new();
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly Task _reader;
    private long _nextId;

    internal ClassifyStreamSession(AsyncDuplexStreamingCall<ClassifyRequest, ClassifyResponse> call)
    {
        _call = call;
        _reader = ReadAllAsync();
    }

    /// <summary>Sends a request (a request_id is assigned if empty); a per-request error becomes an <see cref="RpcException"/>.</summary>
    public async Task<ClassifyResponse> ClassifyAsync(ClassifyRequest request, CancellationToken cancellationToken = default)
    {
        if (string.IsNullOrEmpty(request.RequestId))
        {
            request.RequestId = $"s{Interlocked.Increment(ref _nextId)}";
        }
        var completion = new TaskCompletionSource<ClassifyResponse>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!_pending.TryAdd(request.RequestId, completion))
        {
            throw new ArgumentException($"request_id '{request.RequestId}' is already in flight on this stream.", nameof(request));
        }

        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _call.RequestStream.WriteAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            _pending.TryRemove(request.RequestId, out _);
            throw;
        }
        finally
        {
            _writeLock.Release();
        }
        return await completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task ReadAllAsync()
    {
        Exception? failure = null;
        try
        {
            await foreach (ClassifyResponse response in _call.ResponseStream.ReadAllAsync().ConfigureAwait(false))
            {
                if (!_pending.TryRemove(response.RequestId, out var completion)) continue;
                if (response.Error is { } error)
                {
                    completion.TrySetException(new RpcException(new Status((StatusCode)error.Code, error.Message)));
                }
                else
                {
                    completion.TrySetResult(response);
                }
            }
        }
        catch (Exception ex)
        {
            failure = ex;
        }
        failure ??= new RpcException(new Status(StatusCode.Unavailable, "The stream ended before this request was answered."));
        foreach (var id in _pending.Keys)
        {
            if (_pending.TryRemove(id, out var completion)) completion.TrySetException(failure);
        }
    }

    /// <summary>Half-closes the stream, waits for outstanding responses, and ends the call.</summary>
    public async ValueTask DisposeAsync()
    {
        await _writeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            await _call.RequestStream.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception)
        {
            // The call already ended; the reader has failed what was pending.
        }
        finally
        {
            _writeLock.Release();
        }
        await _reader.ConfigureAwait(false);
        _call.Dispose();
        _writeLock.Dispose();
    }
}
