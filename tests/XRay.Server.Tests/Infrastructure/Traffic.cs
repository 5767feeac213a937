using Grpc.Core;
using XRay.Client;
using XRay.Contracts.V1;

namespace XRay.Server.Tests.Infrastructure;

/// <summary>Requests and bounded waits shared by the observability tests.</summary>
internal static class Traffic
{
    public const int Size = 224;

    public static ClassifyRequest Request(int seed, string? id = null, int images = 1) => new()
    {
        RequestId = id ?? $"r{seed}",
        Tensor = images == 1
            ? Tensors.UInt8(Images.RandomPixels(Size * Size, seed), 1, Size, Size)
            : Tensors.UInt8(Images.RandomPixels(images * Size * Size, seed), images, 1, Size, Size),
    };

    /// <summary>A request the server refuses with INVALID_ARGUMENT (the tensor is not 224 x 224).</summary>
    public static ClassifyRequest InvalidRequest(string id) => new()
    {
        RequestId = id,
        Tensor = Tensors.UInt8(new byte[3 * 5 * 5], 3, 5, 5),
    };

    /// <summary>
    /// Holds the fake model's batches until disposed (or released earlier): a test that fails while holding
    /// must not leave a batch running, or stopping the server would wait for it forever.
    /// </summary>
    public static IDisposable Held(FakeModelBackend backend)
    {
        backend.Hold();
        return new Releaser(backend);
    }

    private sealed class Releaser(FakeModelBackend backend) : IDisposable
    {
        public void Dispose() => backend.Release();
    }

    /// <summary>Completes when the fake model has started its next batch.</summary>
    public static Task<int> NextBatchStarted(FakeModelBackend backend)
    {
        var started = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnStarted(int size)
        {
            backend.BatchStarted -= OnStarted;
            started.TrySetResult(size);
        }
        backend.BatchStarted += OnStarted;
        return started.Task;
    }

    /// <summary>
    /// Polls until <paramref name="condition"/> holds, bounded by the test timeout. For state that changes on the
    /// far side of HTTP/2 and Kestrel (the batcher's queue), where there is no event to await.
    /// </summary>
    public static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        using var cts = new CancellationTokenSource(TestServer.Timeout);
        while (!condition())
        {
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(1), cts.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"timed out waiting until {what}");
            }
        }
    }

    public static Task QueuedImagesBecome(TestServer server, int images) =>
        WaitUntilAsync(() => server.Host.Current!.Batcher.QueuedItems == images, $"{images} images are queued");

    public static async Task<StatusCode> StatusOf(Task call)
    {
        var error = await Assert.ThrowsAsync<RpcException>(() => call).WaitAsync(TestServer.Timeout);
        return error.StatusCode;
    }
}
