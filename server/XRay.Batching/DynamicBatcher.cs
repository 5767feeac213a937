using System.Diagnostics;

namespace XRay.Batching;

/// <summary>
/// Dynamic batcher: requests of one or more items wait in a queue of items; a single dispatch loop forms batches of up
/// to <see cref="BatchingOptions.MaxBatchSize"/> items whenever a model instance is free, hands them to an
/// <see cref="IBatchHandler{TInput, TOutput}"/>, and answers each request with its own rows.
/// </summary>
/// <remarks>
/// Fair share: each request belongs to a caller (a key given at enqueue: a connection, a tenant). Batches take one item
/// per caller in turn (round robin, remembered across batches), first in, first out within a caller, so a caller with
/// hundreds of images queued delays another caller's image by at most one item per batch instead of by its whole
/// backlog. With one caller this is plain FIFO.
/// Locking: all queue and request state is guarded by <c>_lock</c>. Nothing that can call back into this class
/// (time provider, cancellation registrations, the handler, the observer) is called under it; completing a
/// request's task under it is safe because every task runs its continuations asynchronously.
/// </remarks>
public sealed class DynamicBatcher<TInput, TOutput> : IAsyncDisposable
{
    // Timers cannot be armed further ahead (about 49 days); a deadline beyond it is as good as none.
    private static readonly TimeSpan MaxTimerDueTime = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

    private readonly IBatchHandler<TInput, TOutput> _handler;
    private readonly TimeProvider _timeProvider;
    private readonly BatcherObserver _observer;
    private readonly Lock _lock = new();

    // The caller of requests enqueued without one: they share one turn, first in, first out.
    private static readonly object AnyCaller = new();

    // Requests with undispatched items, oldest first; a request leaves when its last item is dispatched.
    private readonly LinkedList<Request> _queue = new();
    // Callers with undispatched items, by key, and in turn order: the first takes the next item.
    private readonly Dictionary<object, CallerQueue> _callers = new();
    private readonly LinkedList<CallerQueue> _turns = new();
    private int _queuedItems;
    private long _batchesStarted;
    // Room held by reservations not yet used: counts against MaxQueueSize like queued items.
    private int _reservedItems;
    private int _runningBatches;
    private bool _stopping;
    private bool _disposed;
    // Bumped under the lock by every change that can allow a dispatch. The loop reads the clock outside the lock
    // (a fake clock may run timer callbacks on the reading thread) and retries if this moved meanwhile, so a batch's
    // start time is never earlier than the event that allowed it.
    private int _version;
    // Set by the loop before it sleeps; whoever changes what the loop can do completes it.
    private TaskCompletionSource? _wake;
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private PreferredBatchSizes? _preferredBatchSizes;
    // Measured compute time per item (moving average over successful batches); zero until a batch has run.
    private TimeSpan _timePerItem;
    private readonly Task _loop;

    // Weight of the newest batch in the moving average of the compute time per item.
    private const double TimePerItemWeight = 0.2;

    public DynamicBatcher(IBatchHandler<TInput, TOutput> handler, BatchingOptions options,
                          TimeProvider? timeProvider = null, BatcherObserver? observer = null)
    {
        ArgumentNullException.ThrowIfNull(handler);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _handler = handler;
        // A copy, so that changing the bound options object later cannot break the queue's invariants.
        Options = options.Clone();
        _timeProvider = timeProvider ?? TimeProvider.System;
        _observer = observer ?? new BatcherObserver();
        _loop = Task.Run(DispatchLoopAsync);
    }

    /// <summary>The options in effect (a copy taken at construction; changing it has no effect).</summary>
    public BatchingOptions Options { get; }

    /// <summary>
    /// Batch sizes to cut batches down to (learned at warm-up from measured forward times); null (default): any size.
    /// May be set at any time; the next batch formed follows it.
    /// </summary>
    public PreferredBatchSizes? PreferredBatchSizes
    {
        get => Volatile.Read(ref _preferredBatchSizes);
        set => Volatile.Write(ref _preferredBatchSizes, value);
    }

    /// <summary>Items waiting for a batch.</summary>
    public int QueuedItems
    {
        get { lock (_lock) { return _queuedItems; } }
    }

    /// <summary>Batches handed to the handler and not yet finished (at most <see cref="BatchingOptions.ModelInstances"/>).</summary>
    public int RunningBatches
    {
        get { lock (_lock) { return _runningBatches; } }
    }

    /// <summary>Batches handed to the handler since construction: whether anything ran since the last look.</summary>
    public long BatchesStarted
    {
        get { lock (_lock) { return _batchesStarted; } }
    }

    /// <summary>Room held by reservations not yet used or released (e.g. images being decoded).</summary>
    public int ReservedItems
    {
        get { lock (_lock) { return _reservedItems; } }
    }

    /// <summary>
    /// Takes room for <paramref name="items"/> items in the queue before they exist, or fails at once with
    /// <see cref="BatchRejectedException"/> (queue full, shutting down) as <c>EnqueueAsync</c> would. Lets a caller refuse
    /// work before doing it (decoding images the queue could not take). Use it with
    /// <see cref="EnqueueAsync(QueueReservation, IReadOnlyList{TInput}, DateTimeOffset?, CancellationToken)"/>, which is
    /// then admitted even while draining; dispose it on every path. <see cref="DrainAsync"/> waits for open reservations.
    /// </summary>
    /// <param name="items">Items the request will hold, at least 1.</param>
    /// <param name="caller">Whose fair share the request counts against (compared with <see cref="object.Equals(object)"/>);
    /// null: the shared caller of all requests without one.</param>
    /// <param name="deadline">When the request's caller stops waiting: a request that would not be computed by then
    /// (see <see cref="EstimatedWait"/>) is refused with <see cref="RejectionReason.DeadlineUnmeetable"/>.</param>
    public QueueReservation Reserve(int items, object? caller = null, DateTimeOffset? deadline = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(items, 1);
        string? rejection;
        RejectionReason reason;
        var now = deadline is null ? default : _timeProvider.GetUtcNow();
        lock (_lock)
        {
            rejection = AdmissionErrorLocked(items, reserved: false, deadline, now, out reason);
            if (rejection is null)
            {
                _reservedItems += items;
            }
        }

        if (rejection is not null)
        {
            _observer.RequestRejected(reason, items);
            throw new BatchRejectedException(reason, rejection);
        }

        return new QueueReservation(items, caller ?? AnyCaller, ReleaseReservation);
    }

    /// <summary>
    /// Queues items for which <paramref name="reservation"/> holds room (as many as it was taken for), without a second
    /// admission check; otherwise as <see cref="EnqueueAsync(IReadOnlyList{TInput}, DateTimeOffset?, CancellationToken, object?)"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">The reservation was used or disposed already.</exception>
    public Task<ItemResult<TOutput>[]> EnqueueAsync(QueueReservation reservation, IReadOnlyList<TInput> items,
                                                   DateTimeOffset? deadline = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(reservation);
        ArgumentNullException.ThrowIfNull(items);
        if (items.Count != reservation.Items)
        {
            throw new ArgumentException($"The reservation holds {reservation.Items} items; the request has {items.Count}.", nameof(items));
        }

        if (!reservation.TryClaim())
        {
            throw new InvalidOperationException("The reservation was already used or released.");
        }

        return EnqueueCore(items, deadline, reservation.Caller, reserved: true, cancellationToken);
    }

    /// <summary>
    /// Queues <paramref name="items"/> and completes with one <see cref="ItemResult{TOutput}"/> per item, in item
    /// order, once all of them ran. Fails with <see cref="BatchRejectedException"/> (queue full, shutting down,
    /// deadline passed before all items were dispatched), <see cref="OperationCanceledException"/> (cancelled while
    /// any item was queued) or <see cref="BatchExecutionException"/> (a batch holding any of its items failed).
    /// Items of a request that failed, expired or was cancelled are removed from the queue and never computed.
    /// </summary>
    /// <param name="caller">Whose fair share the request counts against (compared with <see cref="object.Equals(object)"/>);
    /// null: the shared caller of all requests without one.</param>
    public Task<ItemResult<TOutput>[]> EnqueueAsync(IReadOnlyList<TInput> items, DateTimeOffset? deadline = null,
                                                   CancellationToken cancellationToken = default, object? caller = null)
    {
        ArgumentNullException.ThrowIfNull(items);
        if (items.Count == 0)
        {
            throw new ArgumentException("A request must hold at least one item.", nameof(items));
        }

        return EnqueueCore(items, deadline, caller ?? AnyCaller, reserved: false, cancellationToken);
    }

    /// <summary>Admits and queues a request; with <paramref name="reserved"/>, its room is already held (and claimed).</summary>
    private Task<ItemResult<TOutput>[]> EnqueueCore(IReadOnlyList<TInput> items, DateTimeOffset? deadline, object caller,
                                                    bool reserved, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            if (reserved)
            {
                ReleaseReservedItems(items.Count);
            }

            return Task.FromCanceled<ItemResult<TOutput>[]>(cancellationToken);
        }

        var now = _timeProvider.GetUtcNow();
        var request = new Request(this, items, now, cancellationToken);
        if (deadline is { } due && due <= now)
        {
            if (reserved)
            {
                ReleaseReservedItems(items.Count);
            }

            request.Done = true;
            Reject(request, RejectionReason.DeadlineExceeded,
                $"deadline exceeded: the deadline {due:O} had passed when the request arrived at {now:O}");
            return request.Task;
        }

        // Armed before admission so that an admitted request always has its hooks. A callback that fires before
        // admission answers the request; admission then skips it and disposes the hooks, both stored by then.
        request.ArmHooks(deadline, now, _timeProvider);

        bool answeredByCallback;
        string? rejection = null;
        var reason = default(RejectionReason);
        lock (_lock)
        {
            if (reserved)
            {
                // From here the request itself holds its room: queued, or answered and gone.
                _reservedItems -= items.Count;
            }

            answeredByCallback = request.Done;
            if (!answeredByCallback)
            {
                rejection = AdmissionErrorLocked(items.Count, reserved, deadline, now, out reason);
                if (rejection is null)
                {
                    AddLocked(request, caller);
                    _version++;
                    AssertInvariantsLocked();
                }
                else
                {
                    request.Done = true;
                }
            }

            SetDrainedIfIdleLocked();
        }

        if (answeredByCallback)
        {
            request.DisposeHooks();
        }
        else if (rejection is not null)
        {
            Reject(request, reason, rejection);
        }
        else
        {
            Wake();
        }

        return request.Task;
    }

    /// <summary>
    /// Whether a request of <paramref name="items"/> items with <paramref name="deadline"/> would be admitted now,
    /// without taking room: lets a caller refuse a request before reading it. When it would not, <paramref name="reason"/>
    /// and <paramref name="message"/> say why, as <see cref="Reserve"/> would. Nothing is recorded (the observer is not
    /// told); a request that is then refused is the caller's to count.
    /// </summary>
    public bool WouldAdmit(int items, DateTimeOffset? deadline, out RejectionReason reason, out string? message)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(items, 1);
        var now = deadline is null ? default : _timeProvider.GetUtcNow();
        lock (_lock)
        {
            message = AdmissionErrorLocked(items, reserved: false, deadline, now, out reason);
        }

        return message is null;
    }

    /// <summary>
    /// How long a request of <paramref name="items"/> items admitted now would take until its last item is computed:
    /// the items waiting or reserved ahead of it plus its own, at the measured compute time per item (a moving
    /// average over recent batches), shared by the model instances. Zero until a batch has run. Items of a batch
    /// already running are not counted, so the estimate errs short: a request is refused on it only when it is
    /// unlikely to make its deadline.
    /// </summary>
    public TimeSpan EstimatedWait(int items)
    {
        lock (_lock)
        {
            return EstimatedWaitLocked(items);
        }
    }

    private TimeSpan EstimatedWaitLocked(int items) =>
        _timePerItem * ((double)(_queuedItems + _reservedItems + items) / Options.ModelInstances);

    /// <summary>Why a request may not enter; null when it may. A reserved request was admitted already, unless disposed since.</summary>
    private string? AdmissionErrorLocked(int items, bool reserved, DateTimeOffset? deadline, DateTimeOffset now, out RejectionReason reason)
    {
        reason = RejectionReason.ShuttingDown;
        if (_disposed || (_stopping && !reserved))
        {
            return "shutting down: the batcher no longer admits requests";
        }

        reason = RejectionReason.QueueFull;
        if (reserved)
        {
            return null;
        }

        if (items > Options.MaxQueueSize)
        {
            return $"queue full: request has {items} images, more than the queue holds ({Options.MaxQueueSize})";
        }

        // Reserved room counts as waiting: those images are being prepared and will queue.
        var waiting = _queuedItems + _reservedItems;
        if (waiting + items > Options.MaxQueueSize)
        {
            return $"queue full: {waiting} of {Options.MaxQueueSize} images waiting, request has {items}";
        }

        if (deadline is { } due)
        {
            var wait = EstimatedWaitLocked(items);
            if (due - now < wait)
            {
                reason = RejectionReason.DeadlineUnmeetable;
                var left = due > now ? due - now : TimeSpan.Zero;
                return $"deadline too short: {left.TotalMilliseconds:F0} ms left, but the estimated wait is {wait.TotalMilliseconds:F0} ms " +
                       $"({waiting} images waiting ahead, {_timePerItem.TotalMilliseconds:F1} ms per image)";
            }
        }

        return null;
    }

    private void ReleaseReservation(QueueReservation reservation) => ReleaseReservedItems(reservation.Items);

    private void ReleaseReservedItems(int items)
    {
        lock (_lock)
        {
            _reservedItems -= items;
            Debug.Assert(_reservedItems >= 0);
            SetDrainedIfIdleLocked();
        }
    }

    /// <summary>
    /// Graceful shutdown: stops admitting (new requests fail with <see cref="RejectionReason.ShuttingDown"/>), runs
    /// everything queued without waiting for <see cref="BatchingOptions.MaxQueueDelay"/>, and completes when the queue
    /// is empty, no batch runs and no reservation is open (requests reserved before the drain are still admitted). If <paramref name="cancellationToken"/> is cancelled first, fails what is still
    /// queued with <see cref="RejectionReason.ShuttingDown"/> and throws <see cref="OperationCanceledException"/>;
    /// running batches still finish (<see cref="DisposeAsync"/> waits for them).
    /// </summary>
    public async Task DrainAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            _stopping = true;
            _version++;
            SetDrainedIfIdleLocked();
        }

        Wake();
        try
        {
            await _drained.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            FailQueued("shutting down: the drain was cancelled while the request was queued");
            throw;
        }
    }

    /// <summary>
    /// Stops admitting, fails queued requests with <see cref="RejectionReason.ShuttingDown"/>, waits for running
    /// batches and stops the dispatch loop.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        lock (_lock)
        {
            _stopping = true;
            _disposed = true;
            _version++;
            SetDrainedIfIdleLocked();
        }

        FailQueued("shutting down: the batcher was disposed while the request was queued");
        Wake();
        await _loop.ConfigureAwait(false);
        await _drained.Task.ConfigureAwait(false);
    }

    private async Task DispatchLoopAsync()
    {
        // Runs no user code (batches run on their own tasks), so nothing here can throw from the handler.
        while (true)
        {
            var version = Volatile.Read(ref _version);
            var now = _timeProvider.GetUtcNow();
            Batch? batch = null;
            var decision = BatchDecision.Idle;
            TaskCompletionSource? wake = null;
            lock (_lock)
            {
                if (_disposed)
                {
                    return;
                }

                if (_version != version)
                {
                    continue;
                }

                if (_runningBatches < Options.ModelInstances && _queue.First is { } oldest)
                {
                    // While draining nothing more can arrive, so waiting could not grow the batch.
                    var delay = _stopping ? TimeSpan.Zero : Options.MaxQueueDelay;
                    decision = BatchDecision.Decide(_queuedItems, oldest.Value.EnqueuedAt, now, Options.MaxBatchSize, delay, PreferredBatchSizes);
                    if (decision.Action == BatchAction.Dispatch)
                    {
                        batch = TakeBatchLocked(decision.BatchSize, now);
                    }
                }

                if (batch is null)
                {
                    wake = _wake = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }
            }

            if (batch is not null)
            {
                // Task.Run: a handler that blocks before its first await must not stall the loop.
                _ = Task.Run(() => RunBatchAsync(batch));
                continue;
            }

            ITimer? timer = null;
            if (decision.Action == BatchAction.Wait)
            {
                timer = _timeProvider.CreateTimer(static s => ((DynamicBatcher<TInput, TOutput>)s!).Wake(), this,
                                                  decision.WaitUntil - now, Timeout.InfiniteTimeSpan);
                // The clock may have moved between reading it and arming the relative timer; don't sleep past due.
                if (_timeProvider.GetUtcNow() >= decision.WaitUntil)
                {
                    Wake();
                }
            }

            await wake!.Task.ConfigureAwait(false);
            timer?.Dispose();
        }
    }

    private Batch TakeBatchLocked(int size, DateTimeOffset startedAt)
    {
        Debug.Assert(size > 0 && size <= _queuedItems && size <= Options.MaxBatchSize);
        var inputs = new List<TInput>(size);
        var segments = new List<Segment>();
        while (inputs.Count < size)
        {
            // One item from the caller whose turn it is, then the turn passes on.
            var turn = _turns.First!;
            var caller = turn.Value;
            var request = caller.Requests.First!.Value;
            var last = segments.Count - 1;
            if (last >= 0 && segments[last].Request == request && segments[last].BatchIndex + segments[last].Count == inputs.Count)
            {
                segments[last] = segments[last] with { Count = segments[last].Count + 1 };
            }
            else
            {
                segments.Add(new Segment(request, request.Dispatched, inputs.Count, 1));
            }

            inputs.Add(request.Items[request.Dispatched]);
            request.Dispatched++;
            if (request.Undispatched == 0)
            {
                UnlinkLocked(request);
            }

            if (turn.List is not null && _turns.Count > 1)
            {
                _turns.Remove(turn);
                _turns.AddLast(turn);
            }
        }

        _queuedItems -= size;
        _runningBatches++;
        _batchesStarted++;
        AssertInvariantsLocked();
        return new Batch(inputs, segments, startedAt);
    }

    private async Task RunBatchAsync(Batch batch)
    {
        var size = batch.Inputs.Count;
        IReadOnlyList<TOutput>? outputs = null;
        Exception? error = null;
        try
        {
            _observer.BatchStarted(size);
            // Not cancellable: the batch may serve live requests next to cancelled ones, and disposal waits for it.
            outputs = await _handler.ExecuteAsync(batch.Inputs, CancellationToken.None).ConfigureAwait(false);
            if (outputs is null || outputs.Count != size)
            {
                throw new InvalidOperationException(
                    $"The batch handler returned {outputs?.Count.ToString() ?? "null"} outputs for {size} inputs.");
            }
        }
        catch (Exception e)
        {
            error = e;
        }

        var duration = _timeProvider.GetUtcNow() - batch.StartedAt;
        try
        {
            _observer.BatchCompleted(size, duration, error);
        }
        finally
        {
            CompleteBatch(batch, error is null ? outputs : null, error, duration);
        }
    }

    private void CompleteBatch(Batch batch, IReadOnlyList<TOutput>? outputs, Exception? error, TimeSpan duration)
    {
        var size = batch.Inputs.Count;
        var answered = new List<(Request Request, int ItemsInBatch)>();
        lock (_lock)
        {
            _runningBatches--;
            _version++;
            if (error is null && duration > TimeSpan.Zero)
            {
                var perItem = duration / size;
                _timePerItem = _timePerItem == TimeSpan.Zero ? perItem : (_timePerItem * (1 - TimePerItemWeight)) + (perItem * TimePerItemWeight);
            }

            foreach (var segment in batch.Segments)
            {
                var request = segment.Request;
                if (request.Done)
                {
                    continue;
                }

                if (error is null)
                {
                    // The wall clock may step back.
                    var queueTime = batch.StartedAt > request.EnqueuedAt ? batch.StartedAt - request.EnqueuedAt : TimeSpan.Zero;
                    for (var i = 0; i < segment.Count; i++)
                    {
                        request.Results[segment.RequestIndex + i] =
                            new ItemResult<TOutput>(outputs![segment.BatchIndex + i], queueTime, duration, size);
                    }

                    request.Unanswered -= segment.Count;
                    if (request.Unanswered > 0)
                    {
                        continue;
                    }
                }

                RemoveLocked(request);
                answered.Add((request, segment.Count));
            }

            SetDrainedIfIdleLocked();
            AssertInvariantsLocked();
        }

        Wake();
        foreach (var (request, itemsInBatch) in answered)
        {
            request.DisposeHooks();
            if (error is null)
            {
                request.TrySetResult(request.Results);
            }
            else
            {
                request.TrySetException(new BatchExecutionException(
                    $"a batch of {size} images holding {itemsInBatch} of this request's {request.Items.Count} images failed",
                    error));
            }
        }
    }

    private void OnDeadline(Request request)
    {
        int undispatched;
        bool admitted;
        lock (_lock)
        {
            // Once every item is dispatched the request is in the model's hands; the deadline no longer applies.
            if (request.Done || request.Undispatched == 0)
            {
                return;
            }

            undispatched = request.Undispatched;
            admitted = request.Node is not null;
            RemoveLocked(request);
        }

        if (admitted)
        {
            request.DisposeHooks();
        }

        _observer.RequestRejected(RejectionReason.DeadlineExceeded, request.Items.Count);
        request.TrySetException(new BatchRejectedException(RejectionReason.DeadlineExceeded,
            $"deadline exceeded: {undispatched} of {request.Items.Count} images were still queued at the deadline"));
    }

    private void OnCancelled(Request request)
    {
        bool admitted;
        lock (_lock)
        {
            if (request.Done || request.Undispatched == 0)
            {
                return;
            }

            admitted = request.Node is not null;
            RemoveLocked(request);
        }

        if (admitted)
        {
            request.DisposeHooks();
        }

        _observer.RequestCancelled(request.Items.Count);
        request.TrySetCanceled(request.CancellationToken);
    }

    /// <summary>Answers a request already marked done that never entered the queue.</summary>
    private void Reject(Request request, RejectionReason reason, string message)
    {
        Debug.Assert(request.Done && request.Node is null);
        request.DisposeHooks();
        _observer.RequestRejected(reason, request.Items.Count);
        request.TrySetException(new BatchRejectedException(reason, message));
    }

    private void FailQueued(string message)
    {
        List<Request> failed;
        lock (_lock)
        {
            failed = [.. _queue];
            foreach (var request in failed)
            {
                RemoveLocked(request);
            }
        }

        foreach (var request in failed)
        {
            request.DisposeHooks();
            _observer.RequestRejected(RejectionReason.ShuttingDown, request.Items.Count);
            request.TrySetException(new BatchRejectedException(RejectionReason.ShuttingDown, message));
        }
    }

    /// <summary>Marks the request answered and drops its undispatched items; the caller completes its task.</summary>
    private void RemoveLocked(Request request)
    {
        Debug.Assert(!request.Done);
        request.Done = true;
        if (request.Node is not null)
        {
            _queuedItems -= request.Undispatched;
            UnlinkLocked(request);
        }

        SetDrainedIfIdleLocked();
    }

    private void AddLocked(Request request, object caller)
    {
        if (!_callers.TryGetValue(caller, out var queue))
        {
            queue = new CallerQueue(caller);
            _callers.Add(caller, queue);
            queue.Turn = _turns.AddLast(queue);
        }

        request.Node = _queue.AddLast(request);
        request.Caller = queue;
        request.CallerNode = queue.Requests.AddLast(request);
        _queuedItems += request.Items.Count;
    }

    /// <summary>Takes the request out of the queue and its caller's; a caller with nothing left loses its turn.</summary>
    private void UnlinkLocked(Request request)
    {
        _queue.Remove(request.Node!);
        request.Node = null;
        var caller = request.Caller!;
        caller.Requests.Remove(request.CallerNode!);
        request.CallerNode = null;
        if (caller.Requests.Count == 0)
        {
            _turns.Remove(caller.Turn!);
            _callers.Remove(caller.Key);
        }
    }

    private void SetDrainedIfIdleLocked()
    {
        // Disposal does not wait for open reservations: their holders get ShuttingDown when they enqueue.
        if (_stopping && _queuedItems == 0 && _runningBatches == 0 && (_disposed || _reservedItems == 0))
        {
            _drained.TrySetResult();
        }
    }

    private void Wake()
    {
        TaskCompletionSource? wake;
        lock (_lock)
        {
            wake = _wake;
            _wake = null;
        }

        wake?.TrySetResult();
    }

    [Conditional("DEBUG")]
    private void AssertInvariantsLocked()
    {
        Debug.Assert(_runningBatches >= 0 && _runningBatches <= Options.ModelInstances);
        Debug.Assert(_queuedItems >= 0 && _reservedItems >= 0 && _queuedItems + _reservedItems <= Options.MaxQueueSize);
        var sum = 0;
        foreach (var request in _queue)
        {
            Debug.Assert(!request.Done && request.Undispatched > 0);
            sum += request.Undispatched;
        }

        Debug.Assert(sum == _queuedItems);
        Debug.Assert(_turns.Count == _callers.Count);
        var byCaller = 0;
        foreach (var caller in _turns)
        {
            Debug.Assert(caller.Requests.Count > 0);
            byCaller += caller.Requests.Count;
        }

        Debug.Assert(byCaller == _queue.Count);
    }

    private sealed class Request(DynamicBatcher<TInput, TOutput> batcher, IReadOnlyList<TInput> items,
                                 DateTimeOffset enqueuedAt, CancellationToken cancellationToken)
        : TaskCompletionSource<ItemResult<TOutput>[]>(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        public DynamicBatcher<TInput, TOutput> Batcher { get; } = batcher;
        public IReadOnlyList<TInput> Items { get; } = items;
        public DateTimeOffset EnqueuedAt { get; } = enqueuedAt;
        public CancellationToken CancellationToken { get; } = cancellationToken;
        public ItemResult<TOutput>[] Results { get; } = new ItemResult<TOutput>[items.Count];

        // Guarded by the batcher's lock.
        public LinkedListNode<Request>? Node { get; set; }
        public CallerQueue? Caller { get; set; }
        public LinkedListNode<Request>? CallerNode { get; set; }
        public int Dispatched { get; set; }
        public int Unanswered { get; set; } = items.Count;
        public bool Done { get; set; }
        public int Undispatched => Items.Count - Dispatched;

        private ITimer? _deadlineTimer;
        private CancellationTokenRegistration _registration;

        /// <summary>The deadline timer (unless the deadline is beyond any timer's reach) and the cancellation callback.</summary>
        public void ArmHooks(DateTimeOffset? deadline, DateTimeOffset now, TimeProvider timeProvider)
        {
            if (deadline is { } due && due - now <= MaxTimerDueTime)
            {
                _deadlineTimer = timeProvider.CreateTimer(static s => ((Request)s!).Batcher.OnDeadline((Request)s),
                                                          this, due - now, Timeout.InfiniteTimeSpan);
            }

            if (CancellationToken.CanBeCanceled)
            {
                _registration = CancellationToken.UnsafeRegister(static s => ((Request)s!).Batcher.OnCancelled((Request)s), this);
            }
        }

        // Never under the batcher's lock: disposing a registration waits for its running callback, which takes it.
        public void DisposeHooks()
        {
            _deadlineTimer?.Dispose();
            _registration.Dispose();
        }
    }

    /// <summary>One caller's requests with undispatched items, oldest first. Guarded by the batcher's lock.</summary>
    private sealed class CallerQueue(object key)
    {
        public object Key { get; } = key;
        public LinkedList<Request> Requests { get; } = new();
        public LinkedListNode<CallerQueue>? Turn { get; set; }
    }

    private readonly record struct Segment(Request Request, int RequestIndex, int BatchIndex, int Count);

    private sealed record Batch(List<TInput> Inputs, List<Segment> Segments, DateTimeOffset StartedAt);
}
