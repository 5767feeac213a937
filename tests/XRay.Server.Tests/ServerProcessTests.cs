using XRay.Client;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>The server as users start it: its own process, allocator re-exec, SIGTERM.</summary>
[Collection(nameof(ServerProcessCollection))]
public sealed class ServerProcessTests
{
    [JemallocFact]
    public async Task ServerProcess_RunsOnJemallocServesAndExitsCleanlyOnSigterm()
    {
        // Whatever the test runner was started with, the server must find jemalloc by itself.
        var environment = new[] { "LD_PRELOAD", "MALLOC_CONF", "XRAY_ALLOCATOR", "XRAY_ALLOCATOR_REEXEC" }
            .ToDictionary(name => name, string? (_) => null);
        using var server = ServerProcess.Start(["--warmup", "none"], environment);
        using var client = new XRayClassifierClient(server.Address, new XRayClientOptions { MaxAttempts = 1, Timeout = TimeSpan.FromSeconds(5) });
        await server.WaitUntilServingAsync();

        string maps = await File.ReadAllTextAsync($"/proc/{server.Id}/maps");
        var response = await client.ClassifyTensorAsync(new byte[224 * 224], [1, 224, 224]).WaitAsync(TestServer.Timeout);

        Assert.Contains("libjemalloc", maps);
        Assert.Equal(14, response.Predictions[0].Probabilities.Count);

        server.Terminate();
        await server.WaitForExitAsync();
        Assert.Equal(0, server.ExitCode);
        Assert.Contains("Native allocator: jemalloc", server.Output);
    }

    /// <summary>Skipped, saying why, where jemalloc is not installed (.ci/run installs it).</summary>
    private sealed class JemallocFactAttribute : FactAttribute
    {
        public const string Library = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

        public JemallocFactAttribute()
        {
            if (!OperatingSystem.IsLinux() || !File.Exists(Library))
            {
                Skip = $"{Library} is not installed (Debian package libjemalloc2).";
            }
        }
    }
}
