using System.Collections.Concurrent;
using System.Threading.Channels;
using Microsoft.Extensions.Time.Testing;

namespace XRay.Batching.Tests;

/// <summary>
/// A batcher over <see cref="FakeBatchHandler"/> with a fake clock and a recording observer, disposed after each test:
/// every test finishes its batches, and a batch left running makes disposal hang, which fails the test.
/// </summary>
public abstract class BatcherTestBase : IAsyncLifetime
{
    private protected readonly FakeTimeProvider _clock = new();
    private protected readonly FakeBatchHandler _handler = new();
    private protected readonly RecordingObserver _observer = new();
    private protected DynamicBatcher<int, string>? _batcher;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_batcher is not null)
        {
            await _batcher.DisposeAsync().AsTask().Bounded();
        }
    }
}

internal static class TestTimeouts
{
    /// <summary>Bounds every await so that a hang fails the test instead of stalling the run.</summary>
    public static readonly TimeSpan Hang = TimeSpan.FromSeconds(10);

    public static Task<T> Bounded<T>(this Task<T> task) => task.WaitAsync(Hang);

    public static Task Bounded(this Task task) => task.WaitAsync(Hang);
}

/// <summary>One call to <see cref="FakeBatchHandler"/>; the test decides when and how it finishes.</summary>
internal sealed class BatchCall(int[] inputs)
{
    private readonly TaskCompletionSource<IReadOnlyList<string>> _result =
        new(TaskCreationOptions.RunContinuationsAsynchronously);

    public int[] Inputs { get; } = inputs;

    public Task<IReadOnlyList<string>> Result => _result.Task;

    public static string OutputFor(int input) => $"out-{input}";

    public void Succeed() => _result.SetResult(Inputs.Select(OutputFor).ToArray());

    public void Return(IReadOnlyList<string> outputs) => _result.SetResult(outputs);

    public void Fail(Exception error) => _result.SetException(error);
}

/// <summary>Records each batch and returns a task the test completes, so the test controls when a batch finishes.</summary>
internal sealed class FakeBatchHandler : IBatchHandler<int, string>
{
    private readonly Channel<BatchCall> _calls = Channel.CreateUnbounded<BatchCall>();
    private int _callCount;

    public int CallCount => Volatile.Read(ref _callCount);

    public Task<IReadOnlyList<string>> ExecuteAsync(IReadOnlyList<int> batch, CancellationToken cancellationToken)
    {
        var call = new BatchCall([.. batch]);
        Interlocked.Increment(ref _callCount);
        _calls.Writer.TryWrite(call);
        return call.Result;
    }

    public Task<BatchCall> NextCallAsync() => _calls.Reader.ReadAsync().AsTask().Bounded();
}

internal sealed class RecordingObserver : BatcherObserver
{
    public ConcurrentQueue<string> Events { get; } = new();

    public override void BatchStarted(int batchSize) => Events.Enqueue($"started {batchSize}");

    public override void BatchCompleted(int batchSize, TimeSpan duration, Exception? error) =>
        Events.Enqueue($"completed {batchSize} in {duration.TotalMilliseconds}ms{(error is null ? "" : $" failed: {error.Message}")}");

    public override void RequestRejected(RejectionReason reason, int items) => Events.Enqueue($"rejected {reason} {items}");

    public override void RequestCancelled(int items) => Events.Enqueue($"cancelled {items}");
}
