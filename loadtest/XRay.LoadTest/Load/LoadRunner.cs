using System.Diagnostics;
using Grpc.Core;
using XRay.Contracts.V1;
using XRay.LoadTest.Payloads;
using XRay.LoadTest.Statistics;

namespace XRay.LoadTest.Load;

/// <summary>What the progress display shows while a run goes on.</summary>
public sealed record ProgressSnapshot(
    string Phase, double ElapsedS, double? TotalS, long Sent, long Completed, long Failed, long Measured, double P50Ms, double P99Ms);

/// <summary>
/// Runs one load level against one or more servers and returns what it measured.
/// </summary>
/// <remarks>
/// Closed loop: <see cref="LoadProfile.Concurrency"/> callers, each sending its next request when the last is
/// answered; latency is from send to response. Open loop: arrivals on a schedule (constant or Poisson) whatever
/// the server does, so a slow server builds a backlog instead of slowing the load down; latency is from the
/// scheduled arrival, not the actual send, so the load tester's own delays count against the result rather than
/// hiding it (Gil Tene's "coordinated omission"). Requests sent during the warm-up are not recorded. Throughput
/// counts the successful responses that arrive within the measurement window; latencies cover every measured request.
/// </remarks>
public sealed class LoadRunner
{
    private readonly IReadOnlyList<string> _targets;
    private readonly LoadProfile _profile;
    private readonly PayloadPool _payloads;
    private readonly Process? _server;
    private readonly RunRecorder _recorder = new();
    private RequestSender? _sender;
    private long _start;
    private long _warmupEnd;
    private long _end = long.MaxValue;
    private long _measuredSent;
    private long _measuredArrivals;
    private long _lastMeasuredCompletion;
    private long _inFlight;
    private volatile string _phase = "starting";

    /// <param name="server">The server's process when this tool started it: its CPU use is reported too.</param>
    public LoadRunner(IReadOnlyList<string> targets, LoadProfile profile, PayloadPool payloads, Process? server = null)
    {
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(profile);
        ArgumentNullException.ThrowIfNull(payloads);
        if (targets.Count == 0) throw new ArgumentException("At least one target is needed.", nameof(targets));
        profile.Validate();
        _targets = targets;
        _profile = profile;
        _payloads = payloads;
        _server = server;
    }

    public LoadProfile Profile => _profile;

    /// <summary>Thread-safe; cheap enough to call a few times a second.</summary>
    public ProgressSnapshot Snapshot()
    {
        double elapsed = _start == 0 ? 0 : Stopwatch.GetElapsedTime(_start).TotalSeconds;
        double? total = _profile.Requests is null ? (_profile.Warmup + _profile.Duration).TotalSeconds : null;
        return new ProgressSnapshot(_phase, elapsed, total, _recorder.LiveSent, _recorder.LiveCompleted, _recorder.LiveFailed,
            _recorder.Latency.Count, _recorder.Latency.ValueAtPercentile(50) / 1000.0, _recorder.Latency.ValueAtPercentile(99) / 1000.0);
    }

    /// <summary>Runs warm-up then measurement; cancelling stops early and returns what was measured (marked interrupted).</summary>
    public async Task<RunResult> RunAsync(CancellationToken cancellationToken = default)
    {
        if (_start != 0) throw new InvalidOperationException("A LoadRunner runs once.");
        await using RequestSender sender = RequestSender.Create(_targets, _profile);
        _sender = sender;
        CpuMeter clientCpu = CpuMeter.ForCurrentProcess();
        CpuMeter? serverCpu = CpuMeter.ForProcess(_server);

        _start = Stopwatch.GetTimestamp();
        _warmupEnd = _start + Ticks(_profile.Warmup);
        if (_profile.Requests is null) _end = _warmupEnd + Ticks(_profile.Duration);
        _phase = _profile.Warmup > TimeSpan.Zero ? "warm-up" : "measuring";

        using var watcherStop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Task watcher = WatchWarmupEndAsync(clientCpu, serverCpu, watcherStop.Token);
        try
        {
            if (_profile.Mode == LoadMode.Closed)
            {
                await Task.WhenAll(Enumerable.Range(0, _profile.Concurrency)
                    .Select(worker => Task.Run(() => CallerAsync(worker, cancellationToken), CancellationToken.None))).ConfigureAwait(false);
            }
            else
            {
                await OpenLoopAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            await watcherStop.CancelAsync().ConfigureAwait(false);
            await watcher.ConfigureAwait(false);
        }

        long finished = Stopwatch.GetTimestamp();
        bool interrupted = cancellationToken.IsCancellationRequested;
        if (finished < _warmupEnd)
        {
            // Stopped during the warm-up: nothing was measured; CPU over what ran.
            _warmupEnd = finished;
        }
        long windowEnd = _profile.Requests is null && !interrupted ? _end : Math.Max(Volatile.Read(ref _lastMeasuredCompletion), _warmupEnd);
        _phase = "done";
        return BuildResult(Seconds(windowEnd - _warmupEnd), clientCpu.Measure(), serverCpu?.Measure(), interrupted);
    }

    private async Task WatchWarmupEndAsync(CpuMeter clientCpu, CpuMeter? serverCpu, CancellationToken cancellationToken)
    {
        try
        {
            TimeSpan wait = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), _warmupEnd);
            if (wait > TimeSpan.Zero) await Task.Delay(wait, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        clientCpu.Restart();
        serverCpu?.Restart();
        _phase = "measuring";
    }

    private async Task CallerAsync(int worker, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            long now = Stopwatch.GetTimestamp();
            if (now >= _end) return;
            bool measured = now >= _warmupEnd;
            if (measured && _profile.Requests is { } budget && Interlocked.Increment(ref _measuredArrivals) > budget) return;
            await SendOneAsync(worker, now, measured, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task OpenLoopAsync(CancellationToken cancellationToken)
    {
        ArrivalProcess arrivals = ArrivalProcess.Create(_profile.Arrival, _profile.RateRps, _profile.Seed);
        var outstanding = new List<Task>();
        double offsetSeconds = 0;
        long slot = 0;
        while (!cancellationToken.IsCancellationRequested)
        {
            offsetSeconds += arrivals.NextGapSeconds();
            long scheduled = _start + (long)(offsetSeconds * Stopwatch.Frequency);
            if (scheduled >= _end) break;
            bool measured = scheduled >= _warmupEnd;
            if (measured && _profile.Requests is { } budget && Interlocked.Increment(ref _measuredArrivals) > budget) break;

            TimeSpan wait = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), scheduled);
            // Timers fire on ~1 ms ticks: shorter waits send a little early, which the latency accounts for.
            if (wait > TimeSpan.FromMilliseconds(0.5))
            {
                try
                {
                    await Task.Delay(wait, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
            if (Interlocked.Read(ref _inFlight) >= _profile.MaxInFlight)
            {
                _recorder.RecordDropped(measured);
                continue;
            }
            outstanding.Add(SendOneAsync(slot++, scheduled, measured, cancellationToken));
            if (outstanding.Count >= 4096) outstanding.RemoveAll(task => task.IsCompleted);
        }
        await Task.WhenAll(outstanding).ConfigureAwait(false);
    }

    private async Task SendOneAsync(long slot, long scheduled, bool measured, CancellationToken cancellationToken)
    {
        ClassifyRequest request = _payloads.Next();
        Interlocked.Increment(ref _inFlight);
        long sent = Stopwatch.GetTimestamp();
        _recorder.Sent();
        if (measured)
        {
            Interlocked.Increment(ref _measuredSent);
            if (_profile.Mode == LoadMode.Open) _recorder.ScheduleLag.Record(Microseconds(sent - scheduled));
        }
        try
        {
            ClassifyResponse response = await _sender!.SendAsync(request, slot, cancellationToken).ConfigureAwait(false);
            long done = Stopwatch.GetTimestamp();
            // Late: latency runs from the scheduled arrival. Early (timer granularity): from the actual send.
            long latency = Microseconds(done - Math.Min(sent, scheduled));
            _recorder.RecordSuccess(measured, latency, response, completedInWindow: done <= _end);
            if (measured)
            {
                NoteCompletion(done);
                _recorder.Timeline.Record(done, latency, response.Predictions.Count);
            }
        }
        catch (Exception) when (cancellationToken.IsCancellationRequested)
        {
            // Interrupted: neither a success nor the server's failure.
        }
        catch (RpcException ex)
        {
            _recorder.RecordFailure(measured, ex.StatusCode);
            if (measured) NoteFailure();
        }
        catch (Exception ex) when (ex is InvalidOperationException or IOException or ObjectDisposedException)
        {
            // E.g. writing to a stream the server has ended.
            _recorder.RecordFailure(measured, StatusCode.Unknown);
            if (measured) NoteFailure();
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    private void NoteFailure()
    {
        long now = Stopwatch.GetTimestamp();
        NoteCompletion(now);
        _recorder.Timeline.Record(now, 0, images: 0);
    }

    private void NoteCompletion(long timestamp)
    {
        long current = Volatile.Read(ref _lastMeasuredCompletion);
        while (timestamp > current)
        {
            long seen = Interlocked.CompareExchange(ref _lastMeasuredCompletion, timestamp, current);
            if (seen == current) return;
            current = seen;
        }
    }

    private RunResult BuildResult(double windowSeconds, CpuUsage clientCpu, CpuUsage? serverCpu, bool interrupted)
    {
        long sent = Volatile.Read(ref _measuredSent);
        long failed = _recorder.Failed;
        SortedDictionary<int, long> byBatch = _recorder.ImagesByBatchSize();
        long images = byBatch.Values.Sum();
        double batches = byBatch.Sum(pair => (double)pair.Value / pair.Key);
        double window = Math.Max(windowSeconds, 1e-9);
        double inWindowShare = _recorder.OkImages == 0 ? 0 : (double)_recorder.OkImagesInWindow / _recorder.OkImages;
        bool open = _profile.Mode == LoadMode.Open;
        return new RunResult
        {
            Label = _profile.Label,
            Mode = _profile.Mode.ToString().ToLowerInvariant(),
            Api = _profile.Api.ToString().ToLowerInvariant(),
            Concurrency = open ? null : _profile.Concurrency,
            RateRps = open ? _profile.RateRps : null,
            Arrival = open ? _profile.Arrival.ToString().ToLowerInvariant() : null,
            Connections = _profile.Connections,
            Targets = _targets,
            Payload = new PayloadInfo
            {
                Kind = _payloads.Spec.Kind.ToString().ToLowerInvariant(),
                ImagesPerRequest = _payloads.ImagesPerRequest,
                Channels = _payloads.Spec.Kind == PayloadKind.Png ? 0 : _payloads.Spec.Channels,
                RequestBytes = _payloads.RequestBytes,
                Source = _payloads.Source,
            },
            WarmupS = Math.Round(_profile.Warmup.TotalSeconds, 3),
            DurationS = Math.Round(windowSeconds, 3),
            Requests = new RequestCounts
            {
                Sent = sent,
                Ok = _recorder.OkRequests,
                Failed = failed,
                Dropped = _recorder.Dropped,
                ImagesOk = _recorder.OkImages,
                ErrorRate = sent == 0 ? 0 : Math.Round((double)failed / sent, 5),
            },
            StatusCodes = _recorder.StatusCounts(),
            Throughput = new Throughput
            {
                RequestsPerS = Math.Round(_recorder.OkRequestsInWindow / window, 2),
                ImagesPerS = Math.Round(_recorder.OkImagesInWindow / window, 2),
                OfferedRps = Math.Round(sent / window, 2),
            },
            LatencyMs = _recorder.Latency.Summarize(),
            ScheduleLagMs = open ? _recorder.ScheduleLag.Summarize() : null,
            Server = new ServerTiming
            {
                QueueMs = _recorder.ServerQueue.Summarize(),
                ComputeMs = _recorder.ServerCompute.Summarize(),
                BatchSize = new BatchSizes
                {
                    Mean = batches == 0 ? 0 : Math.Round(images / batches, 2),
                    ImageWeightedMean = images == 0 ? 0 : Math.Round(byBatch.Sum(pair => (double)pair.Key * pair.Value) / images, 2),
                    Max = byBatch.Count == 0 ? 0 : byBatch.Keys.Max(),
                    ImagesByBatchSize = byBatch.ToDictionary(pair => pair.Key.ToString(System.Globalization.CultureInfo.InvariantCulture), pair => pair.Value),
                },
                // An estimate: batches straddling the window edges can push it a little past 1.
                ModelBusyFraction = Math.Round(Math.Min(1, _recorder.ComputeShareSeconds * inWindowShare / window), 3),
            },
            ClientCpu = clientCpu,
            ServerCpu = serverCpu,
            Interrupted = interrupted,
            Timeline = _recorder.Timeline.Build(_warmupEnd, windowSeconds),
        };
    }

    private static long Ticks(TimeSpan span) => (long)(span.TotalSeconds * Stopwatch.Frequency);

    private static double Seconds(long ticks) => (double)ticks / Stopwatch.Frequency;

    private static long Microseconds(long ticks) => ticks * 1_000_000 / Stopwatch.Frequency;
}
