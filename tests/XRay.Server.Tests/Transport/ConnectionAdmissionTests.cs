using Microsoft.Extensions.Options;
using XRay.Server.Grpc;

namespace XRay.Server.Tests.Transport;

public sealed class ConnectionAdmissionTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private static ConnectionAdmission Admission(int limit) =>
        new(Options.Create(new TransportOptions { MaxImagesInFlightPerConnection = limit }));

    [Fact]
    public void TryAcquire_BeyondTheConnectionsShare_IsRefused_UntilImagesAreReleased()
    {
        ConnectionAdmission admission = Admission(8);

        Assert.True(admission.TryAcquire("a", 5));
        Assert.False(admission.TryAcquire("a", 4));
        Assert.True(admission.TryAcquire("b", 8));
        admission.Release("a", 5);

        Assert.True(admission.TryAcquire("a", 4));
        Assert.Equal(4, admission.InFlight("a"));
    }

    [Fact]
    public void TryAcquire_LargerThanTheShare_IsAdmittedOnlyAlone()
    {
        ConnectionAdmission admission = Admission(8);
        Assert.True(admission.TryAcquire("a", 1));

        Assert.False(admission.TryAcquire("a", 20));
        admission.Release("a", 1);
        Assert.True(admission.TryAcquire("a", 20));
    }

    [Fact]
    public async Task AcquireAsync_WaitsInOrder_AndUnaryCallsDoNotJumpTheLine()
    {
        ConnectionAdmission admission = Admission(4);
        Assert.True(admission.TryAcquire("a", 4));
        Task first = admission.AcquireAsync("a", 3, CancellationToken.None);
        Task second = admission.AcquireAsync("a", 1, CancellationToken.None);
        Assert.False(first.IsCompleted);
        Assert.False(second.IsCompleted);

        admission.Release("a", 1);
        Assert.False(admission.TryAcquire("a", 1));
        Assert.False(first.IsCompleted);
        admission.Release("a", 3);

        await Task.WhenAll(first, second).WaitAsync(Timeout);
        Assert.Equal(4, admission.InFlight("a"));
    }

    [Fact]
    public async Task AcquireAsync_Cancelled_LeavesTheLine()
    {
        ConnectionAdmission admission = Admission(2);
        Assert.True(admission.TryAcquire("a", 2));
        using var cts = new CancellationTokenSource();
        Task waiting = admission.AcquireAsync("a", 2, cts.Token);

        cts.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(Timeout));
        admission.Release("a", 2);
        Assert.Equal(0, admission.InFlight("a"));
        Assert.True(admission.TryAcquire("a", 2));
    }
}
