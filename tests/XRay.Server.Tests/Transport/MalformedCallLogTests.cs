using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using Microsoft.Extensions.Time.Testing;
using XRay.Server.Grpc;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests.Transport;

/// <summary>A client sending garbage in a loop costs the log a bounded number of lines, the rest counted.</summary>
public sealed class MalformedCallLogTests
{
    private static byte[] Garbage => RawGrpc.Frame([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);

    [Fact]
    public async Task MalformedCallFlood_LogsAtMostTheBudgetPerSecond_AndTheNextLineCountsThoseLeftOut()
    {
        var clock = new FakeTimeProvider();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()), builder =>
        {
            builder.Logging.AddFakeLogging();
            builder.Services.Replace(ServiceDescriptor.Singleton(new LogBudget(3, clock)));
        });
        FakeLogCollector logs = server.App.Services.GetFakeLogCollector();
        logs.Clear();
        using var raw = new RawGrpc(server.Address);

        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(StatusCode.InvalidArgument, (await raw.CallAsync(RawGrpc.Classify, Garbage)).Status);
        }
        FakeLogRecord[] flood = logs.GetSnapshot().Where(record => record.Id.Id == 20).ToArray();
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(StatusCode.InvalidArgument, (await raw.CallAsync(RawGrpc.ClassifyStream, Garbage)).Status);
        FakeLogRecord[] all = logs.GetSnapshot().Where(record => record.Id.Id == 20).ToArray();

        Assert.Equal(3, flood.Length);
        Assert.All(flood, record => Assert.Equal(LogLevel.Warning, record.Level));
        Assert.Contains("(0 more refusals not logged before this one)", flood[0].Message);
        FakeLogRecord next = Assert.Single(all.Skip(3));
        Assert.Contains("ClassifyStream", next.Message);
        Assert.Contains("(5 more refusals not logged before this one)", next.Message);
    }
}
