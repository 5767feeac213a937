using System.Buffers.Binary;
using System.CommandLine;
using System.Diagnostics;
using System.Net;
using Grpc.Core;
using Grpc.Health.V1;
using XRay.Client;
using XRay.Contracts.V1;

namespace XRay.LoadTest.Bench;

/// <summary>
/// Benchmarks of the transport bounds against a server started for the purpose: stalled uploads (server RSS while they
/// are held, and whether they are cut off) and SIGTERM with idle open streams (time to exit, exit code).
/// Measurements, not tests: they print what they saw.
/// </summary>
internal static class TransportBench
{
    public static Command StallCommand(TextWriter output)
    {
        var streams = new Option<int>("--streams") { Description = "Calls that stall.", DefaultValueFactory = _ => 32 };
        var messageMib = new Option<int>("--message-mib") { Description = "Message size each call declares, MiB.", DefaultValueFactory = _ => 60 };
        var sendMib = new Option<int>("--send-mib") { Description = "MiB each call sends before it stalls.", DefaultValueFactory = _ => 56 };
        var hold = new Option<double>("--hold") { Description = "Seconds to hold the stalled calls and watch the server.", DefaultValueFactory = _ => 45 };
        var unary = new Option<bool>("--unary") { Description = "Stall unary Classify calls instead of ClassifyStream." };
        (Option<string?> serverPath, Option<string[]> serverArgs) = ServerOptions();
        var command = new Command("stall", "Calls that send most of a large message and stop: the server's RSS while they are held, and when they are cut off.")
        {
            streams, messageMib, sendMib, hold, unary, serverPath, serverArgs,
        };
        command.SetAction((result, ct) => StallAsync(output, result.GetValue(streams), result.GetValue(messageMib), result.GetValue(sendMib),
            TimeSpan.FromSeconds(result.GetValue(hold)), result.GetValue(unary), ServerPath(result.GetValue(serverPath)), result.GetValue(serverArgs) ?? [], ct));
        return command;
    }

    public static Command ShutdownCommand(TextWriter output)
    {
        var streams = new Option<int>("--streams") { Description = "ClassifyStream calls left open and idle (each answered once first).", DefaultValueFactory = _ => 8 };
        (Option<string?> serverPath, Option<string[]> serverArgs) = ServerOptions();
        var command = new Command("shutdown", "SIGTERM with idle ClassifyStream calls and a health watch open: seconds to exit and the exit code.")
        {
            streams, serverPath, serverArgs,
        };
        command.SetAction((result, ct) => ShutdownAsync(output, result.GetValue(streams), ServerPath(result.GetValue(serverPath)),
            result.GetValue(serverArgs) ?? [], ct));
        return command;
    }

    private static (Option<string?>, Option<string[]>) ServerOptions() =>
    (
        new Option<string?>("--server-path") { Description = "xray-server binary to start (default: the one built beside this tool)." },
        new Option<string[]>("--server-arg") { Description = "Extra server argument (repeat it), e.g. --server-arg=--Transport:MessageReadTimeoutSeconds=10." }
    );

    private static string ServerPath(string? given) =>
        given ?? ServerProcess.FindServerBinary() ?? throw new FileNotFoundException("no xray-server binary found; build server/XRay.Server or pass --server-path.");

    private static async Task<int> StallAsync(TextWriter output, int count, int messageMib, int sendMib, TimeSpan hold, bool unary,
        string serverPath, string[] serverArgs, CancellationToken cancellationToken)
    {
        if (sendMib >= messageMib) throw new ArgumentException("--send-mib must be less than --message-mib: the calls must stall inside the message.");
        await using ServerProcess server = await ServerProcess.StartAsync(serverPath, serverArgs, TimeSpan.FromMinutes(3), cancellationToken);
        int pid = server.Process.Id;
        double baseline = RssMib(pid);
        output.WriteLine($"server {serverPath} (pid {pid}); RSS before: {baseline:F0} MiB; {count} {(unary ? "unary" : "stream")} calls send {sendMib} of {messageMib} MiB, then stall");

        using var release = new CancellationTokenSource();
        using var http = new HttpClient(new SocketsHttpHandler { EnableMultipleHttp2Connections = true }) { Timeout = Timeout.InfiniteTimeSpan };
        var clock = Stopwatch.StartNew();
        var ended = new double?[count];
        var statuses = new string?[count];
        Task[] calls = Enumerable.Range(0, count).Select(i => Task.Run(async () =>
        {
            try
            {
                using var request = new HttpRequestMessage(HttpMethod.Post, $"{server.Address}/xray.v1.Classifier/{(unary ? "Classify" : "ClassifyStream")}")
                {
                    Version = HttpVersion.Version20,
                    VersionPolicy = HttpVersionPolicy.RequestVersionExact,
                    Content = new StallingContent(messageMib << 20, sendMib << 20, release.Token),
                };
                request.Headers.TryAddWithoutValidation("te", "trailers");
                request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/grpc");
                using HttpResponseMessage response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, release.Token);
                await response.Content.ReadAsByteArrayAsync(release.Token);
                statuses[i] = Header(response, "grpc-status") is { } code ? ((StatusCode)int.Parse(code)).ToString() : $"HTTP {(int)response.StatusCode}";
            }
            catch (Exception ex) when (ex is HttpRequestException or IOException)
            {
                statuses[i] = "reset";
            }
            catch (OperationCanceledException)
            {
                return;
            }
            ended[i] = clock.Elapsed.TotalSeconds;
        })).ToArray();

        double peak = baseline;
        output.WriteLine("  t (s)  RSS (MiB)  calls still held");
        while (clock.Elapsed < hold)
        {
            await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken);
            double rss = RssMib(pid);
            peak = Math.Max(peak, rss);
            int open = ended.Count(e => e is null);
            output.WriteLine($"  {clock.Elapsed.TotalSeconds,5:F0}  {rss,9:F0}  {open,16}");
        }
        double held = RssMib(pid);
        release.Cancel();
        await Task.WhenAll(calls).WaitAsync(TimeSpan.FromSeconds(30), CancellationToken.None);

        int cut = ended.Count(e => e is not null);
        output.WriteLine($"peak RSS {peak:F0} MiB (+{peak - baseline:F0}); RSS after {hold.TotalSeconds:F0} s {held:F0} MiB (+{held - baseline:F0})");
        output.WriteLine(cut == 0
            ? $"cut off by the server: 0 of {count} within {hold.TotalSeconds:F0} s"
            : $"cut off by the server: {cut} of {count}, after {ended.Where(e => e is not null).Min():F1}-{ended.Where(e => e is not null).Max():F1} s; " +
              $"statuses: {string.Join(", ", statuses.Where(s => s is not null).GroupBy(s => s).Select(g => $"{g.Key} x{g.Count()}"))}");
        return 0;
    }

    private static async Task<int> ShutdownAsync(TextWriter output, int count, string serverPath, string[] serverArgs, CancellationToken cancellationToken)
    {
        await using ServerProcess server = await ServerProcess.StartAsync(serverPath, serverArgs, TimeSpan.FromMinutes(3), cancellationToken);
        using var client = new XRayClassifierClient(server.Address, new XRayClientOptions { MaxAttempts = 1 });
        var streams = new List<AsyncDuplexStreamingCall<ClassifyRequest, ClassifyResponse>>();
        for (int i = 0; i < count; i++)
        {
            var stream = client.Classifier.ClassifyStream(cancellationToken: cancellationToken);
            await stream.RequestStream.WriteAsync(new ClassifyRequest
            {
                RequestId = $"s{i}",
                Tensor = Tensors.UInt8(new byte[224 * 224], 1, 224, 224),
            }, cancellationToken);
            if (!await stream.ResponseStream.MoveNext(cancellationToken)) throw new InvalidOperationException("a stream ended before its answer");
            streams.Add(stream);
        }
        using var watch = client.Health.Watch(new HealthCheckRequest(), cancellationToken: cancellationToken);
        await watch.ResponseStream.MoveNext(cancellationToken);

        output.WriteLine($"server {serverPath} (pid {server.Process.Id}): {count} idle ClassifyStream calls and a health watch open; SIGTERM");
        var clock = Stopwatch.StartNew();
        server.Terminate();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await server.Process.WaitForExitAsync(limit.Token);
        double seconds = clock.Elapsed.TotalSeconds;
        var ends = new List<string>();
        foreach (var stream in streams)
        {
            try
            {
                while (await stream.ResponseStream.MoveNext(CancellationToken.None)) { }
                ends.Add("OK");
            }
            catch (RpcException ex)
            {
                ends.Add(ex.StatusCode.ToString());
            }
            stream.Dispose();
        }
        output.WriteLine($"exited after {seconds:F2} s with code {server.Process.ExitCode}; streams ended: " +
                         string.Join(", ", ends.GroupBy(e => e).Select(g => $"{g.Key} x{g.Count()}")));
        return 0;
    }

    private static string? Header(HttpResponseMessage response, string name) =>
        response.Headers.TryGetValues(name, out var values) || response.TrailingHeaders.TryGetValues(name, out values) ? values.FirstOrDefault() : null;

    /// <summary>Resident set size of a process, MiB (Linux).</summary>
    private static double RssMib(int pid)
    {
        foreach (string line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;
            }
        }
        return double.NaN;
    }

    /// <summary>A gRPC message prefix declaring <c>declared</c> bytes, then <c>sent</c> of them, then nothing until released.</summary>
    private sealed class StallingContent(int declared, int sent, CancellationToken release) : HttpContent
    {
        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            var prefix = new byte[5];
            BinaryPrimitives.WriteUInt32BigEndian(prefix.AsSpan(1), (uint)declared);
            await stream.WriteAsync(prefix);
            var chunk = new byte[1 << 20];
            for (int written = 0; written < sent; written += chunk.Length)
            {
                await stream.WriteAsync(chunk.AsMemory(0, Math.Min(chunk.Length, sent - written)));
            }
            await stream.FlushAsync();
            await Task.Delay(Timeout.Infinite, release);
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }
}
