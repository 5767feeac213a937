using System.Collections.Concurrent;
using Grpc.Core;

namespace XRay.Client;

/// <summary>
/// One duplex streaming call with many requests in flight: each <see cref="SendAsync"/> completes when the response
/// carrying its id arrives (responses may come back in any order); a per-request error becomes an
/// <see cref="RpcException"/>, and the end of the stream fails whatever is still pending.
/// </summary>
public abstract class StreamSession<TRequest, TResponse, TResult> : IAsyncDisposable
    where TRequest : class
{
    private readonly AsyncDuplexStreamingCall<TRequest, TResponse> _call;
    private readonly ConcurrentDictionary<string, TaskCompletionSource<TResult>> _pending = new();
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly string _idName;
    private readonly Task _reader;
    private long _nextId;

    private protected StreamSession(AsyncDuplexStreamingCall<TRequest, TResponse> call, string idName)
    {
        _call = call;
        _idName = idName;
        _reader = ReadAllAsync();
    }

    /// <summary>The id a request is matched by (<see cref="SetId"/> gives one to a request without).</summary>
    private protected abstract string IdOf(TRequest request);

    private protected abstract void SetId(TRequest request, string id);

    /// <summary>Which request a response answers (null: none), and its result or its error.</summary>
    private protected abstract (string? Id, TResult? Result, Exception? Error) Answer(TResponse response);

    /// <summary>Sends a request (an id is assigned if it has none) and waits for its answer.</summary>
    private protected async Task<TResult> SendAsync(TRequest request, CancellationToken cancellationToken)
    {
        if (string.IsNullOrEmpty(IdOf(request)))
        {
            SetId(request, $"s{Interlocked.Increment(ref _nextId)}");
        }
        string id = IdOf(request);
        var completion = new TaskCompletionSource<TResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!_pending.TryAdd(id, completion))
        {
            throw new ArgumentException($"{_idName} '{id}' is already in flight on this stream.", nameof(request));
        }

        Exception? writeFailure = null;
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _call.RequestStream.WriteAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            writeFailure = ex;
        }
        finally
        {
            _writeLock.Release();
        }
        if (writeFailure is not null)
        {
            // A call the server already ended (refused its caller, say) fails the write with a bare status; the call's
            // own status arrives with the end of the response stream, which the reader gives every pending request.
            if (!cancellationToken.IsCancellationRequested)
            {
                await Task.WhenAny(_reader, Task.Delay(StatusGrace, CancellationToken.None)).ConfigureAwait(false);
            }
            if (_pending.TryRemove(id, out _))
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(writeFailure);
            }
        }
        return await completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    // How long a failed write waits for the call's status before reporting the write's own failure.
    private static readonly TimeSpan StatusGrace = TimeSpan.FromSeconds(5);

    private async Task ReadAllAsync()
    {
        Exception? failure = null;
        try
        {
            await foreach (TResponse response in _call.ResponseStream.ReadAllAsync().ConfigureAwait(false))
            {
                var (id, result, error) = Answer(response);
                if (id is null || !_pending.TryRemove(id, out var completion)) continue;
                if (error is not null)
                {
                    completion.TrySetException(error);
                }
                else
                {
                    completion.TrySetResult(result!);
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
        GC.SuppressFinalize(this);
    }
}
