using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Grpc.Health.V1;
using XRay.Client;

namespace XRay.Server.Tests.Infrastructure;

/// <summary>
/// The built xray-server in its own process, as users start it, on free loopback ports: output captured, SIGTERM,
/// and its Prometheus metrics read back. Disposing kills it if it is still running.
/// </summary>
internal sealed class ServerProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly StringBuilder _error = new();
    private static readonly HttpClient Http = new() { Timeout = TestServer.Timeout };

    private ServerProcess(Process process, int port, int metricsPort)
    {
        _process = process;
        Address = $"http://127.0.0.1:{port}";
        MetricsAddress = $"http://127.0.0.1:{metricsPort}";
    }

    public string Address { get; }
    public string MetricsAddress { get; }
    public int Id => _process.Id;
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;

    /// <summary>Standard output and standard error, interleaved as they arrived.</summary>
    public string Output
    {
        get { lock (_output) return _output.ToString(); }
    }

    /// <summary>Standard error alone (where the server's one-line start-up errors go).</summary>
    public string ErrorOutput
    {
        get { lock (_output) return _error.ToString(); }
    }

    /// <summary>Starts <c>xray-server</c> with <paramref name="arguments"/> after its ports.</summary>
    /// <param name="environment">Variables to set (a null value removes one).</param>
    public static ServerProcess Start(IEnumerable<string> arguments, IReadOnlyDictionary<string, string?>? environment = null)
    {
        int port = FreePort(), metricsPort = FreePort();
        var start = new ProcessStartInfo("dotnet")
        {
            ArgumentList = { Path.Combine(AppContext.BaseDirectory, "xray-server.dll"),
                             "--grpc-url", $"http://127.0.0.1:{port}", "--metrics-url", $"http://127.0.0.1:{metricsPort}" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        foreach ((string name, string? value) in environment ?? new Dictionary<string, string?>())
        {
            if (value is null) start.Environment.Remove(name);
            else start.Environment[name] = value;
        }

        var server = new ServerProcess(Process.Start(start)!, port, metricsPort);
        server._process.OutputDataReceived += (_, e) => server.Append(e.Data);
        server._process.ErrorDataReceived += (_, e) => server.Append(e.Data, error: true);
        server._process.BeginOutputReadLine();
        server._process.BeginErrorReadLine();
        return server;
    }

    private void Append(string? line, bool error = false)
    {
        if (line is null) return;
        lock (_output)
        {
            _output.AppendLine(line);
            if (error) _error.AppendLine(line);
        }
    }

    /// <summary>Polls gRPC health until SERVING (bounded); until the process listens, calls fail with UNAVAILABLE.</summary>
    public async Task WaitUntilServingAsync()
    {
        using var client = new XRayClassifierClient(Address, new XRayClientOptions { MaxAttempts = 1, Timeout = TimeSpan.FromSeconds(5) });
        using var timeout = new CancellationTokenSource(TestServer.Timeout);
        while (true)
        {
            Assert.False(_process.HasExited, $"the server exited during start-up:\n{Output}");
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

    public void Terminate() => Assert.Equal(0, Kill(_process.Id, Sigterm));

    public Task WaitForExitAsync() => _process.WaitForExitAsync().WaitAsync(TestServer.Timeout);

    /// <summary>The sum of every series of a Prometheus metric (counter or gauge) on the Metrics endpoint.</summary>
    public async Task<double> ReadMetricAsync(string name)
    {
        string text = await Http.GetStringAsync($"{MetricsAddress}/metrics").WaitAsync(TestServer.Timeout);
        return text.Split('\n')
            .Where(line => line.StartsWith(name, StringComparison.Ordinal) && (line.Length == name.Length || line[name.Length] is ' ' or '{'))
            // name{labels} value [timestamp]
            .Sum(line => double.Parse(line[(Math.Max(line.LastIndexOf('}'), name.Length - 1) + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture));
    }

    public void Dispose()
    {
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        _process.Dispose();
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private const int Sigterm = 15;

    [DllImport("libc.so.6", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
