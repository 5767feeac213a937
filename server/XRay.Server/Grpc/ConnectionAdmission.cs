using System.Diagnostics;
using Microsoft.Extensions.Options;

namespace XRay.Server.Grpc;

/// <summary>
/// Counts the images each HTTP/2 connection has admitted and not yet had answered, so that one caller cannot hold the
/// whole queue (<see cref="TransportOptions.MaxImagesInFlightPerConnection"/>). Unary calls try and are refused at once;
/// streams wait, first come first served, which stops their reading and lets HTTP/2 flow control push back.
/// </summary>
public sealed class ConnectionAdmission(IOptions<TransportOptions> options)
{
    private readonly int _limit = options.Value.MaxImagesInFlightPerConnection;
    private readonly Lock _lock = new();
    // Only connections with images in flight or waiters have an entry.
    private readonly Dictionary<string, Share> _connections = new(StringComparer.Ordinal);

    public int Limit => _limit;

    /// <summary>Images admitted and unanswered on <paramref name="connection"/>.</summary>
    public int InFlight(string connection)
    {
        lock (_lock)
        {
            return _connections.TryGetValue(connection, out Share? share) ? share.InFlight : 0;
        }
    }

    /// <summary>Admits <paramref name="images"/> when they fit and nobody on the connection is waiting; else false.</summary>
    public bool TryAcquire(string connection, int images)
    {
        lock (_lock)
        {
            Share share = ShareOf(connection);
            if (share.Waiters.Count == 0 && Fits(share, images))
            {
                share.InFlight += images;
                return true;
            }
            RemoveIfIdle(connection, share);
            return false;
        }
    }

    /// <summary>Admits <paramref name="images"/>, waiting behind earlier waiters of the same connection until they fit.</summary>
    public async Task AcquireAsync(string connection, int images, CancellationToken cancellationToken)
    {
        Share share;
        LinkedListNode<Waiter> node;
        lock (_lock)
        {
            share = ShareOf(connection);
            if (share.Waiters.Count == 0 && Fits(share, images))
            {
                share.InFlight += images;
                return;
            }
            node = share.Waiters.AddLast(new Waiter(images, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)));
        }
        using (cancellationToken.Register(() =>
               {
                   lock (_lock)
                   {
                       // Still waiting: leave the line. Already admitted: the caller owns the images.
                       if (node.List is not null)
                       {
                           share.Waiters.Remove(node);
                           RemoveIfIdle(connection, share);
                           node.Value.Admitted.TrySetCanceled(cancellationToken);
                       }
                   }
               }))
        {
            await node.Value.Admitted.Task.ConfigureAwait(false);
        }
    }

    /// <summary>Gives back images that were answered (or will never be), admitting waiters that now fit.</summary>
    public void Release(string connection, int images)
    {
        List<TaskCompletionSource>? admitted = null;
        lock (_lock)
        {
            if (!_connections.TryGetValue(connection, out Share? share))
            {
                Debug.Fail("Released images that were never admitted.");
                return;
            }
            share.InFlight -= images;
            Debug.Assert(share.InFlight >= 0, "More images released than admitted.");
            while (share.Waiters.First is { } first && Fits(share, first.Value.Images))
            {
                share.Waiters.RemoveFirst();
                share.InFlight += first.Value.Images;
                (admitted ??= []).Add(first.Value.Admitted);
            }
            RemoveIfIdle(connection, share);
        }
        admitted?.ForEach(waiter => waiter.TrySetResult());
    }

    // A request larger than the whole share still runs, alone, rather than never.
    private bool Fits(Share share, int images) => share.InFlight == 0 || share.InFlight + images <= _limit;

    private Share ShareOf(string connection)
    {
        if (!_connections.TryGetValue(connection, out Share? share))
        {
            share = new Share();
            _connections.Add(connection, share);
        }
        return share;
    }

    private void RemoveIfIdle(string connection, Share share)
    {
        if (share.InFlight == 0 && share.Waiters.Count == 0)
        {
            _connections.Remove(connection);
        }
    }

    private sealed class Share
    {
        public int InFlight;
        public readonly LinkedList<Waiter> Waiters = new();
    }

    private readonly record struct Waiter(int Images, TaskCompletionSource Admitted);
}
