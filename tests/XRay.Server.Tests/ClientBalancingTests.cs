using XRay.Client;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>The C# client's addressing: a dns:/// name (a Kubernetes headless Service) resolves to the servers it calls.</summary>
public sealed class ClientBalancingTests
{
    [Fact]
    public async Task DnsName_IsResolvedAndCalled()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        // localhost resolves to 127.0.0.1 and ::1; the server listens on the first only: round robin skips the other.
        using var client = new XRayClassifierClient($"dns:///localhost:{new Uri(server.Address).Port}");

        for (int i = 0; i < 4; i++)
        {
            var response = await client.ClassifyTensorAsync(Images.RandomPixels(224 * 224, i), [1, 224, 224]).WaitAsync(TestServer.Timeout);
            Assert.Equal("fake", response.ModelName);
        }
        Assert.Equal(4, backend.ImagesComputed);
    }

    [Fact]
    public void DnsName_AmongOtherAddresses_IsRefused()
    {
        var error = Assert.Throws<ArgumentException>(() => new XRayClassifierClient(["dns:///a:5051", "dns:///b:5051"]));

        Assert.Contains("one dns:/// name", error.Message);
    }
}
