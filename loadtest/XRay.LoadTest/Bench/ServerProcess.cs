using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Grpc.Core;
using Grpc.Health.V1;
using XRay.Client;

namespace XRay.LoadTest.Bench;

/// <summary>
/// An xray-server started as a child process on loopback (free ports), waited on until gRPC health says SERVING,
/// and stopped with SIGTERM (killed if it does not exit): never left running, whatever happens.
/// </summary>
internal sealed class ServerProcess : IAsyncDisposable
{
    private const int OutputLinesKept = 200;
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(30);
    private readonly Process _process;
    private readonly Queue<string> _output = new();

    private ServerProcess(Process process, string address, string arguments)
    {
        _process = process;
        Address = address;
        Arguments = arguments;
    }

    public string Address { get; }

    /// <summary>The command line it was started with, for the report.</summary>
    public string Arguments { get; }

    public Process Process => _process;

    /// <summary>What the server's "Native allocator: ..." start-up line said, when it printed one.</summary>
    public string? Allocator { get; private set; }

    /// <summary>Starts the server and waits until it is SERVING.</summary>
    /// <param name="serverPath">The xray-server apphost or xray-server.dll.</param>
    /// <param name="arguments">Server options (e.g. --max-batch-size 1); the gRPC and metrics URLs are added.</param>
    /// <exception cref="InvalidOperationException">It exited or did not become SERVING in time; the message has its last output.</exception>
    public static async Task<ServerProcess> StartAsync(string serverPath, IReadOnlyList<string> arguments, TimeSpan readyTimeout, CancellationToken cancellationToken)
    {
        int grpcPort = FreePort(), metricsPort = FreePort();
        string address = $"http://127.0.0.1:{grpcPort}";
        string[] args =
        [
            .. arguments,
            "--grpc-url", address,
            "--metrics-url", $"http://127.0.0.1:{metricsPort}",
        ];
        var process = new Process { StartInfo = ToolProcess.StartInfo(serverPath, args), EnableRaisingEvents = true };
        var server = new ServerProcess(process, address, string.Join(' ', args));
        process.OutputDataReceived += (_, e) => server.Keep(e.Data);
        process.ErrorDataReceived += (_, e) => server.Keep(e.Data);
        if (!process.Start()) throw new InvalidOperationException($"could not start {serverPath}");
        Children.Add(process);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            await server.WaitUntilServingAsync(readyTimeout, cancellationToken).ConfigureAwait(false);
            return server;
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The last lines it printed.</summary>
    public string OutputTail()
    {
        lock (_output) return string.Join(Environment.NewLine, _output);
    }

    private void Keep(string? line)
    {
        if (line is null) return;
        const string AllocatorPrefix = "Native allocator:";
        int allocator = line.IndexOf(AllocatorPrefix, StringComparison.Ordinal);
        if (allocator >= 0) Allocator = line[(allocator + AllocatorPrefix.Length)..].Trim();
        lock (_output)
        {
            _output.Enqueue(line);
            if (_output.Count > OutputLinesKept) _output.Dequeue();
        }
    }

    private async Task WaitUntilServingAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var client = new XRayClassifierClient(Address, new XRayClientOptions { MaxAttempts = 1, Timeout = TimeSpan.FromSeconds(2) });
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < timeout)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"the server exited with code {_process.ExitCode} before serving:{Environment.NewLine}{OutputTail()}");
            }
            try
            {
                if (await client.CheckHealthAsync(cancellationToken: cancellationToken).ConfigureAwait(false) == HealthCheckResponse.Types.ServingStatus.Serving) return;
            }
            catch (RpcException)
            {
                // Not listening yet.
            }
            await Task.Delay(TimeSpan.FromMilliseconds(200), cancellationToken).ConfigureAwait(false);
        }
        throw new InvalidOperationException($"the server was not SERVING after {timeout.TotalSeconds:F0} s:{Environment.NewLine}{OutputTail()}");
    }

    /// <summary>SIGTERM (the server drains and exits), then SIGKILL after 30 s.</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) _ = Kill(_process.Id, Sigterm);
                else _process.Kill(entireProcessTree: true);
                using var wait = new CancellationTokenSource(StopTimeout);
                try
                {
                    await _process.WaitForExitAsync(wait.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    _process.Kill(entireProcessTree: true);
                    await _process.WaitForExitAsync(CancellationToken.None).WaitAsync(StopTimeout).ConfigureAwait(false);
                }
            }
        }
        catch (InvalidOperationException)
        {
            // Never started, or already gone.
        }
        finally
        {
            Children.Remove(_process);
            _process.Dispose();
        }
    }

    /// <summary>Default server binary: the xray-server built in the repository above this tool, in the same configuration.</summary>
    public static string? FindServerBinary() => ToolProcess.FindBuilt(Path.Combine("server", "XRay.Server"), "xray-server");

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Children still running; killed if this process exits first (Ctrl+C, an unhandled error).</summary>
    private static readonly ChildSet Children = new();

    private const int Sigterm = 15;

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);

    private sealed class ChildSet
    {
        private readonly HashSet<Process> _processes = [];

        public ChildSet()
        {
            AppDomain.CurrentDomain.ProcessExit += (_, _) => KillAll();
        }

        public void Add(Process process)
        {
            lock (_processes) _processes.Add(process);
        }

        public void Remove(Process process)
        {
            lock (_processes) _processes.Remove(process);
        }

        private void KillAll()
        {
            lock (_processes)
            {
                foreach (Process process in _processes)
                {
                    try
                    {
                        process.Kill(entireProcessTree: true);
                    }
                    catch (InvalidOperationException)
                    {
                        // Already gone.
                    }
                }
            }
        }
    }
}
