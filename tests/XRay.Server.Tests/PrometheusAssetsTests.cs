using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Grpc.Core;
using XRay.Contracts.V1;
using XRay.Server.Tests.Infrastructure;
using static XRay.Server.Tests.Infrastructure.Traffic;

namespace XRay.Server.Tests;

/// <summary>A test that needs Debian's <c>prometheus</c> package (prometheus and promtool); skipped, saying so, without it.</summary>
public sealed class RequiresPrometheusFactAttribute : FactAttribute
{
    public RequiresPrometheusFactAttribute()
    {
        if (PrometheusAssetsTests.FindTool("prometheus") is null || PrometheusAssetsTests.FindTool("promtool") is null)
        {
            Skip = "prometheus/promtool not installed: apt-get install prometheus (.ci/run installs it)";
        }
    }
}

/// <summary>
/// The monitoring assets in deploy/ against a real Prometheus scraping a real server: promtool accepts them, and
/// every PromQL expression of the Grafana dashboard and of the alert rules runs without error and returns data.
/// </summary>
[Collection(nameof(ObservabilityCollection))]
public sealed class PrometheusAssetsTests
{
    private static readonly TimeSpan Timeout = TestServer.Timeout;
    private static readonly string Deploy = Path.Combine(RepositoryRoot(), "deploy");
    private static readonly string ConfigFile = Path.Combine(Deploy, "prometheus", "prometheus.yml");
    private static readonly string RulesFile = Path.Combine(Deploy, "prometheus", "alerts.yml");
    private static readonly string DashboardFile = Path.Combine(Deploy, "grafana", "dashboards", "xray-serving.json");

    // Grafana's built-in variables, as Grafana would expand them for a short time range.
    private static readonly Dictionary<string, string> GrafanaIntervals = new()
    {
        ["__rate_interval"] = "1m",
        ["__interval"] = "15s",
        ["__range"] = "5m",
    };

    [RequiresPrometheusFact]
    public async Task Promtool_AcceptsTheConfigAndTheAlertRules()
    {
        (int configExit, string configOutput) = await RunToolAsync("promtool", "check", "config", ConfigFile);
        (int rulesExit, string rulesOutput) = await RunToolAsync("promtool", "check", "rules", RulesFile);

        Assert.True(configExit == 0, configOutput);
        Assert.True(rulesExit == 0, rulesOutput);
        Assert.Contains("SUCCESS", rulesOutput);
    }

    [RequiresPrometheusFact]
    public async Task DashboardAndAlertQueries_AllReturnData_FromARealPrometheusScrapingTheServer()
    {
        string job = Regex.Match(await File.ReadAllTextAsync(ConfigFile), @"job_name:\s*""?([\w.-]+)").Groups[1].Value;
        Assert.False(string.IsNullOrEmpty(job), $"no job_name in {ConfigFile}");
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend),
            settings: ["--Batching:MaxBatchSize=4", "--Batching:MaxQueueSize=12"]);
        await using var prometheus = await PrometheusProcess.StartAsync(job, new Uri(server.MetricsAddress), RulesFile);

        // Two rounds of every kind of traffic with a scrape between them, so that rates over a window see counters move.
        await DriveTrafficAsync(server, backend);
        await prometheus.WaitForScrapeAfterAsync(DateTimeOffset.UtcNow);
        await DriveTrafficAsync(server, backend);
        await prometheus.WaitForScrapeAfterAsync(DateTimeOffset.UtcNow);
        await prometheus.WaitForScrapeAfterAsync(DateTimeOffset.UtcNow);

        var failures = new List<string>();
        List<(string Source, string Expression)> queries = [.. DashboardQueries(), .. await AlertQueriesAsync(prometheus, failures)];
        Assert.True(queries.Count > 30, $"only {queries.Count} queries found");
        foreach ((string source, string expression) in queries)
        {
            if (await prometheus.QueryAsync(expression) is { } problem)
            {
                failures.Add($"{source}: {problem}\n    {expression}");
            }
        }

        Assert.True(failures.Count == 0,
            $"{failures.Count} of {queries.Count} queries failed against Prometheus:\n{string.Join("\n", failures)}\n\nPrometheus log:\n{prometheus.Log}");
    }

    /// <summary>Successes of every method, and one of each failure: invalid input, model fault, deadline, cancel, queue full.</summary>
    private static async Task DriveTrafficAsync(TestServer server, FakeModelBackend backend)
    {
        await Task.WhenAll(Enumerable.Range(0, 12).Select(i => server.Client.ClassifyAsync(Request(i)))).WaitAsync(Timeout);
        await server.Client.ClassifyAsync(Request(20, images: 6)).WaitAsync(Timeout);
        // An encoded image, for the decode pool's wait time.
        var png = new ClassifyRequest { RequestId = "png", Encoded = new EncodedImages { Images = { Google.Protobuf.ByteString.CopyFrom(Images.Png(300, 200, seed: 21)) } } };
        await server.Stub.ClassifyAsync(png).ResponseAsync.WaitAsync(Timeout);
        using (var timeout = new CancellationTokenSource(Timeout))
        using (var stream = server.Stub.ClassifyStream(cancellationToken: timeout.Token))
        {
            foreach (int seed in new[] { 30, 31, 32 })
            {
                await stream.RequestStream.WriteAsync(Request(seed)).WaitAsync(Timeout);
            }
            await stream.RequestStream.CompleteAsync().WaitAsync(Timeout);
            // Bounded by the call's cancellation token.
            await foreach (ClassifyResponse _ in stream.ResponseStream.ReadAllAsync(timeout.Token))
            {
            }
        }
        await server.Stub.GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync.WaitAsync(Timeout);
        Assert.Equal(StatusCode.InvalidArgument, await StatusOf(server.Client.ClassifyAsync(InvalidRequest("bad"))));
        backend.Failure = new InvalidOperationException("test failure");
        Assert.Equal(StatusCode.Internal, await StatusOf(server.Client.ClassifyAsync(Request(40))));
        backend.Failure = null;

        using IDisposable held = Held(backend);
        Task<int> first = NextBatchStarted(backend);
        Task<ClassifyResponse> running = server.Client.ClassifyAsync(Request(50));
        await first.WaitAsync(Timeout);
        var expired = server.Stub.ClassifyAsync(Request(51), deadline: DateTime.UtcNow.AddSeconds(1)).ResponseAsync;
        await QueuedImagesBecome(server, 1);
        Assert.Equal(StatusCode.DeadlineExceeded, await StatusOf(expired));
        await QueuedImagesBecome(server, 0);
        using (var cancel = new CancellationTokenSource())
        {
            var cancelled = server.Stub.ClassifyAsync(Request(52), cancellationToken: cancel.Token).ResponseAsync;
            await QueuedImagesBecome(server, 1);
            cancel.Cancel();
            Assert.Equal(StatusCode.Cancelled, await StatusOf(cancelled));
        }
        await QueuedImagesBecome(server, 0);
        Task<ClassifyResponse>[] queued = Enumerable.Range(53, 3).Select(seed => server.Client.ClassifyAsync(Request(seed, images: 4))).ToArray();
        await QueuedImagesBecome(server, 12);
        Assert.Equal(StatusCode.ResourceExhausted, await StatusOf(server.Client.ClassifyAsync(Request(59))));
        backend.Release();
        await Task.WhenAll([running, .. queued]).WaitAsync(Timeout);
    }

    /// <summary>Every <c>expr</c> in the dashboard (rows, panels, targets) and every query variable, with Grafana's variables expanded.</summary>
    private static List<(string Source, string Expression)> DashboardQueries()
    {
        using JsonDocument dashboard = JsonDocument.Parse(File.ReadAllText(DashboardFile));
        var variables = new List<string>();
        var queries = new List<(string, string)>();
        foreach (JsonElement variable in dashboard.RootElement.GetProperty("templating").GetProperty("list").EnumerateArray())
        {
            string name = variable.GetProperty("name").GetString()!;
            variables.Add(name);
            if (variable.GetProperty("type").GetString() != "query")
            {
                continue;
            }
            JsonElement query = variable.GetProperty("query");
            string text = query.ValueKind == JsonValueKind.String ? query.GetString()! : query.GetProperty("query").GetString()!;
            // label_values(<selector>, label) lists a label's values over the series <selector> selects.
            Match labelValues = Regex.Match(text, @"^\s*label_values\((.+),\s*\w+\s*\)\s*$", RegexOptions.Singleline);
            Assert.True(labelValues.Success, $"variable {name}: only label_values(<selector>, <label>) queries are checked: {text}");
            queries.Add(($"dashboard variable ${name}", labelValues.Groups[1].Value));
        }

        CollectExpressions(dashboard.RootElement, "dashboard", queries);
        return queries.Select(q => (q.Item1, Expand(q.Item2, variables, q.Item1))).ToList();
    }

    private static void CollectExpressions(JsonElement element, string where, List<(string, string)> queries)
    {
        if (element.ValueKind == JsonValueKind.Array)
        {
            foreach (JsonElement item in element.EnumerateArray())
            {
                CollectExpressions(item, where, queries);
            }
        }
        else if (element.ValueKind == JsonValueKind.Object)
        {
            if (element.TryGetProperty("title", out JsonElement title) && title.ValueKind == JsonValueKind.String)
            {
                where = $"panel \"{title.GetString()}\"";
            }
            if (element.TryGetProperty("expr", out JsonElement expr) && expr.ValueKind == JsonValueKind.String)
            {
                string refId = element.TryGetProperty("refId", out JsonElement id) ? id.GetString()! : "?";
                queries.Add(($"{where} target {refId}", expr.GetString()!));
            }
            foreach (JsonProperty property in element.EnumerateObject())
            {
                CollectExpressions(property.Value, where, queries);
            }
        }
    }

    private static string Expand(string expression, List<string> variables, string source)
    {
        foreach ((string name, string value) in GrafanaIntervals)
        {
            expression = Regex.Replace(expression, $@"\$\{{{name}\}}|\${name}\b", value);
        }
        // Dashboard variables select every instance, as "All" does.
        foreach (string name in variables.OrderByDescending(n => n.Length))
        {
            expression = Regex.Replace(expression, $@"\$\{{{name}(:[^}}]*)?\}}|\${name}\b|\[\[{name}\]\]", ".+");
        }
        Assert.False(expression.Contains('$'), $"{source}: unknown Grafana variable left in {expression}");
        return expression;
    }

    /// <summary>
    /// The rules Prometheus loaded from alerts.yml (so Prometheus itself parses the file): a recording rule's query,
    /// and an alert's signal, the left side of its final comparison with a threshold. A healthy server does not
    /// fire the alerts, but each signal must have data, or the alert could never fire.
    /// </summary>
    private static async Task<List<(string, string)>> AlertQueriesAsync(PrometheusProcess prometheus, List<string> failures)
    {
        int declared = Regex.Matches(await File.ReadAllTextAsync(RulesFile), @"^\s*-\s*(alert|record):", RegexOptions.Multiline).Count;
        JsonElement[] rules = await prometheus.WaitForRulesEvaluatedAsync();
        Assert.Equal(declared, rules.Length);

        var queries = new List<(string, string)>();
        foreach (JsonElement rule in rules)
        {
            string name = rule.GetProperty("name").GetString()!;
            string query = rule.GetProperty("query").GetString()!;
            if (rule.GetProperty("health").GetString() != "ok")
            {
                failures.Add($"rule {name}: evaluation {rule.GetProperty("health").GetString()}: {rule.GetProperty("lastError").GetString()}");
            }
            queries.Add(rule.GetProperty("type").GetString() == "alerting"
                ? ($"alert {name} (signal)", AlertSignal(query, name))
                : ($"recording rule {name}", query));
        }
        return queries;
    }

    /// <summary>The left side of an alert expression's last top-level comparison, which must have a number on its right.</summary>
    internal static string AlertSignal(string expression, string alert)
    {
        int depth = 0, opStart = -1, opEnd = -1;
        char quote = '\0';
        for (int i = 0; i < expression.Length; i++)
        {
            char c = expression[i];
            if (quote != '\0')
            {
                if (c == '\\') i++;
                else if (c == quote) quote = '\0';
                continue;
            }
            switch (c)
            {
                case '"' or '\'' or '`':
                    quote = c;
                    break;
                case '(' or '{' or '[':
                    depth++;
                    break;
                case ')' or '}' or ']':
                    depth--;
                    break;
                case '>' or '<' or '=' or '!' when depth == 0:
                    int length = i + 1 < expression.Length && expression[i + 1] == '=' ? 2 : 1;
                    if (length == 2 || c is '>' or '<')
                    {
                        (opStart, opEnd) = (i, i + length);
                        i += length - 1;
                    }
                    break;
            }
        }
        string threshold = opStart < 0 ? "" : Regex.Replace(expression[opEnd..].Trim(), @"^bool\s+", "");
        Assert.True(opStart > 0 && double.TryParse(threshold, NumberStyles.Float, CultureInfo.InvariantCulture, out _),
            $"alert {alert}: write its expression as '<signal> <comparison> <number>' so its signal can be checked: {expression}");
        return expression[..opStart].Trim();
    }

    internal static string? FindTool(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Append("/usr/bin")
            .Select(directory => Path.Combine(directory, name))
            .FirstOrDefault(File.Exists);

    private static async Task<(int ExitCode, string Output)> RunToolAsync(string tool, params string[] arguments)
    {
        var start = new ProcessStartInfo(FindTool(tool)!) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        using var process = Process.Start(start)!;
        try
        {
            Task<string> stdout = process.StandardOutput.ReadToEndAsync(), stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(Timeout);
            return (process.ExitCode, await stdout.WaitAsync(Timeout) + await stderr.WaitAsync(Timeout));
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    private static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "Serving.sln"))) return directory.FullName;
        }
        throw new InvalidOperationException($"no Serving.sln above {AppContext.BaseDirectory}");
    }

    /// <summary>A Prometheus on a free loopback port with a temporary config and data directory, scraping one target every second.</summary>
    private sealed class PrometheusProcess : IAsyncDisposable
    {
        private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(100);
        private readonly Process _process;
        private readonly string _directory;
        private readonly string _job;
        private readonly StringBuilder _log = new();
        private readonly HttpClient _http;

        private PrometheusProcess(Process process, string directory, string job, Uri address)
        {
            _process = process;
            _directory = directory;
            _job = job;
            _http = new HttpClient { BaseAddress = address, Timeout = Timeout };
        }

        public string Log
        {
            get { lock (_log) return _log.ToString(); }
        }

        public static async Task<PrometheusProcess> StartAsync(string job, Uri target, string rulesFile)
        {
            string directory = Directory.CreateTempSubdirectory("xray-prometheus-").FullName;
            string config = Path.Combine(directory, "prometheus.yml");
            await File.WriteAllTextAsync(config, $"""
                global:
                  scrape_interval: 1s
                  scrape_timeout: 1s
                  evaluation_interval: 1s
                rule_files:
                  - "{rulesFile}"
                scrape_configs:
                  - job_name: "{job}"
                    metrics_path: /metrics
                    static_configs:
                      - targets: ["{target.Authority}"]
                """);
            int port = FreePort();
            var start = new ProcessStartInfo(FindTool("prometheus")!)
            {
                ArgumentList =
                {
                    $"--config.file={config}", $"--storage.tsdb.path={Path.Combine(directory, "data")}",
                    $"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                },
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            Process process = Process.Start(start)!;
            var prometheus = new PrometheusProcess(process, directory, job, new Uri($"http://127.0.0.1:{port}"));
            process.OutputDataReceived += (_, e) => prometheus.Append(e.Data);
            process.ErrorDataReceived += (_, e) => prometheus.Append(e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            try
            {
                await prometheus.PollAsync("Prometheus to become ready", async () =>
                {
                    using HttpResponseMessage ready = await prometheus._http.GetAsync("/-/ready");
                    return ready.IsSuccessStatusCode;
                });
                return prometheus;
            }
            catch
            {
                await prometheus.DisposeAsync();
                throw;
            }
        }

        /// <summary>Waits until the server has been scraped successfully after <paramref name="time"/> (plus the exporter's 300 ms cache).</summary>
        public Task WaitForScrapeAfterAsync(DateTimeOffset time)
        {
            double after = time.ToUnixTimeMilliseconds() / 1000.0 + 0.5;
            return PollAsync($"a scrape of job {_job} after {time:O}", async () =>
            {
                JsonElement result = await GetDataAsync($"/api/v1/query?query={Uri.EscapeDataString($"timestamp(up{{job=\"{_job}\"}} == 1)")}");
                return result.GetProperty("result").EnumerateArray().Any(series =>
                    double.Parse(series.GetProperty("value")[1].GetString()!, CultureInfo.InvariantCulture) > after);
            });
        }

        /// <summary>The loaded rules, once every one has been evaluated at least once.</summary>
        public async Task<JsonElement[]> WaitForRulesEvaluatedAsync()
        {
            JsonElement[] rules = [];
            await PollAsync("every rule to be evaluated", async () =>
            {
                JsonElement data = await GetDataAsync("/api/v1/rules");
                rules = data.GetProperty("groups").EnumerateArray()
                            .SelectMany(group => group.GetProperty("rules").EnumerateArray()).Select(rule => rule.Clone()).ToArray();
                return rules.Length > 0 && rules.All(rule => rule.GetProperty("health").GetString() != "unknown");
            });
            return rules;
        }

        /// <summary>Runs an instant query; returns why it is unusable (an error, no series, no finite value), or null.</summary>
        public async Task<string?> QueryAsync(string expression)
        {
            using HttpResponseMessage response = await _http.GetAsync($"/api/v1/query?query={Uri.EscapeDataString(expression)}").WaitAsync(Timeout);
            using JsonDocument body = JsonDocument.Parse(await response.Content.ReadAsStringAsync().WaitAsync(Timeout));
            if (body.RootElement.GetProperty("status").GetString() != "success")
            {
                return $"error {body.RootElement.GetProperty("errorType").GetString()}: {body.RootElement.GetProperty("error").GetString()}";
            }
            JsonElement data = body.RootElement.GetProperty("data");
            string[] values = data.GetProperty("resultType").GetString() switch
            {
                "vector" => data.GetProperty("result").EnumerateArray().Select(s => s.GetProperty("value")[1].GetString()!).ToArray(),
                "scalar" => [data.GetProperty("result")[1].GetString()!],
                var type => throw new InvalidOperationException($"unexpected result type {type} for {expression}"),
            };
            if (values.Length == 0)
            {
                return "no data";
            }
            return values.Any(v => double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double x) && double.IsFinite(x))
                ? null
                : $"no finite value (got {string.Join(", ", values.Take(5))})";
        }

        private async Task<JsonElement> GetDataAsync(string path)
        {
            using HttpResponseMessage response = await _http.GetAsync(path).WaitAsync(Timeout);
            response.EnsureSuccessStatusCode();
            using JsonDocument body = JsonDocument.Parse(await response.Content.ReadAsStringAsync().WaitAsync(Timeout));
            return body.RootElement.GetProperty("data").Clone();
        }

        /// <summary>Polls Prometheus (an external process, with no events to await) until the condition holds, bounded.</summary>
        private async Task PollAsync(string what, Func<Task<bool>> condition)
        {
            using var timeout = new CancellationTokenSource(Timeout);
            while (true)
            {
                Assert.False(_process.HasExited, $"Prometheus exited (code {(_process.HasExited ? _process.ExitCode : 0)}) waiting for {what}:\n{Log}");
                try
                {
                    if (await condition().WaitAsync(timeout.Token)) return;
                }
                catch (HttpRequestException) when (!timeout.IsCancellationRequested)
                {
                    // Not listening yet.
                }
                catch (OperationCanceledException) when (timeout.IsCancellationRequested)
                {
                    break;
                }
                try
                {
                    await Task.Delay(PollInterval, timeout.Token);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
            throw new TimeoutException($"timed out waiting for {what}. Prometheus log:\n{Log}");
        }

        private void Append(string? line)
        {
            if (line is null) return;
            lock (_log) _log.AppendLine(line);
        }

        public async ValueTask DisposeAsync()
        {
            _http.Dispose();
            try
            {
                if (!_process.HasExited)
                {
                    _process.Kill(entireProcessTree: true);
                    await _process.WaitForExitAsync().WaitAsync(Timeout);
                }
            }
            finally
            {
                _process.Dispose();
                try
                {
                    Directory.Delete(_directory, recursive: true);
                }
                catch (IOException)
                {
                    // Best effort: a temp directory.
                }
            }
        }

        private static int FreePort()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            return ((IPEndPoint)listener.LocalEndpoint).Port;
        }
    }
}
