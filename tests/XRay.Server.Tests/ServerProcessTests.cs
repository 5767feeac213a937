using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Grpc.Health.V1;
using XRay.Client;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>The server as users start it: its own process, allocator re-exec, SIGTERM.</summary>
public sealed class ServerProcessTests
{
    [JemallocFact]
    public async Task ServerProcess_RunsOnJemallocServesAndExitsCleanlyOnSigterm()
    {
        int port = FreePort(), metricsPort = FreePort();
        var start = new ProcessStartInfo("dotnet")
        {
            ArgumentList = { Path.Combine(AppContext.BaseDirectory, "xray-server.dll"),
                             "--grpc-url", $"http://127.0.0.1:{port}", "--metrics-url", $"http://127.0.0.1:{metricsPort}",
                             "--warmup", "none" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        // Whatever the test runner was started with, the server must find jemalloc by itself.
        foreach (string name in new[] { "LD_PRELOAD", "MALLOC_CONF", "XRAY_ALLOCATOR", "XRAY_ALLOCATOR_REEXEC" })
        {
            start.Environment.Remove(name);
        }

        using var process = Process.Start(start)!;
        var output = new System.Text.StringBuilder();
        process.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            using var client = new XRayClassifierClient($"http://127.0.0.1:{port}", new XRayClientOptions { MaxAttempts = 1, Timeout = TimeSpan.FromSeconds(5) });
            await WaitUntilServingAsync(client, process);

            string maps = await File.ReadAllTextAsync($"/proc/{process.Id}/maps");
            var response = await client.ClassifyTensorAsync(new byte[224 * 224], [1, 224, 224]).WaitAsync(TestServer.Timeout);

            Assert.Contains("libjemalloc", maps);
            Assert.Equal(14, response.Predictions[0].Probabilities.Count);

            Assert.Equal(0, Kill(process.Id, Sigterm));
            await process.WaitForExitAsync().WaitAsync(TestServer.Timeout);
            Assert.Equal(0, process.ExitCode);
            lock (output) Assert.Contains("Native allocator: jemalloc", output.ToString());
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    private static async Task WaitUntilServingAsync(XRayClassifierClient client, Process process)
    {
        // The process takes a few seconds to start; until it listens, calls fail with UNAVAILABLE.
        using var timeout = new CancellationTokenSource(TestServer.Timeout);
        while (true)
        {
            Assert.False(process.HasExited, "the server exited during start-up");
            try
            {
                if (await client.CheckHealthAsync(cancellationToken: timeout.Token) == HealthCheckResponse.Types.ServingStatus.Serving) return;
            }
            catch (global::Grpc.Core.RpcException) when (!timeout.IsCancellationRequested)
            {
            }
            await Task.Delay(TimeSpan.FromMilliseconds(100), timeout.Token);
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private const int Sigterm = 15;

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

    [DllImport("libc.so.6", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
