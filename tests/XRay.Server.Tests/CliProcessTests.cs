using System.Text.Json;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>
/// The built <c>xray</c> in its own process, as a user runs it, with each mistake a new user makes: one line naming it,
/// no stack trace, and the documented exit code (README, "Exit codes": 2 usage, 3 not found, 4 unreachable, 5 refused,
/// 7 not SERVING). The server is the real one on loopback with a fake model.
/// </summary>
public sealed class CliProcessTests
{
    private static Task<ToolRun> Xray(params string[] args) => ToolRun.StartAsync("clients/XRay.Cli", "xray", args);

    private static string HostPort(string address) => new Uri(address).Authority;

    [Fact]
    public async Task Help_EverywhereAndAsACommand()
    {
        ToolRun help = await Xray("--help");
        ToolRun helpCommand = await Xray("help");
        ToolRun classifyHelp = await Xray("help", "classify");
        ToolRun nothing = await Xray();

        Assert.Equal(0, help.Exit);
        Assert.Contains("classify", help.Output);
        Assert.Contains("--verbose", help.Output);
        Assert.Equal(help.Output, helpCommand.Output);
        Assert.Equal(0, helpCommand.Exit);
        Assert.Equal(0, classifyHelp.Exit);
        Assert.Contains("folders", classifyHelp.Output);
        // No command: the usage on stderr, as a usage error.
        Assert.Equal(2, nothing.Exit);
        Assert.Contains("Usage:", nothing.Error);
    }

    [Fact]
    public async Task UsageMistakes_OneLineAndExit2_BeforeAnyCall()
    {
        (await Xray("bogus")).AssertOneLineError(2, "unknown command 'bogus' (the commands are classify, info, health, load-model)");
        (await Xray("health", "--timeout", "0")).AssertOneLineError(2, "--timeout must be a positive number of seconds; got 0");
        (await Xray("health", "--timeout", "soon")).AssertOneLineError(2, "soon");
        (await Xray("classify")).AssertOneLineError(2, "classify");
        (await Xray("health", "--server", "localhost:http")).AssertOneLineError(2, "'localhost:http' is not a server address: 'http' is not a port");
        (await Xray("health", "--server", "ftp://127.0.0.1:21")).AssertOneLineError(2, "'ftp://' is not a scheme");
        (await Xray("health", "--no-such-flag")).AssertOneLineError(2, "--no-such-flag");
    }

    [Fact]
    public async Task Addresses_HostPortLocalhostAndUrls_AllReachTheServer()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));
        int port = new Uri(server.Address).Port;

        foreach (string address in new[] { $"localhost:{port}", $"127.0.0.1:{port}", server.Address, $"dns:///127.0.0.1:{port}" })
        {
            ToolRun health = await Xray("health", "--server", address);
            Assert.True(health.Exit == 0, $"{address}: exit {health.Exit}: {health.Error}");
            Assert.Equal("SERVING", health.Output.Trim());
        }
        ToolRun json = await Xray("health", "--json", "--server", $"localhost:{port}");
        Assert.Equal(0, json.Exit);
        Assert.Equal("SERVING", JsonDocument.Parse(json.Output).RootElement.GetProperty("status").GetString());
    }

    [Fact]
    public async Task WrongPortOrNoServer_Exit4_WithAHintForTheMetricsPort()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));

        ToolRun metrics = await Xray("health", "--server", HostPort(server.MetricsAddress));
        ToolRun nothing = await Xray("info", "--server", "127.0.0.1:1", "--timeout", "5");

        metrics.AssertOneLineError(4, "speaks HTTP/1.1, not gRPC: is it the metrics port? The gRPC port is");
        Assert.DoesNotContain("HTTP_1_1_REQUIRED", metrics.Error);
        nothing.AssertOneLineError(4, "cannot reach an XRay server at 127.0.0.1:1");
    }

    [Fact]
    public async Task Health_NotServing_Exit7()
    {
        var gate = new TaskCompletionSource();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()) { LoadGate = gate }, waitUntilServing: false);
        try
        {
            ToolRun health = await Xray("health", "--server", server.Address, "--json");

            Assert.Equal(7, health.Exit);
            Assert.Equal("NOT_SERVING", JsonDocument.Parse(health.Output).RootElement.GetProperty("status").GetString());
        }
        finally
        {
            gate.SetResult();
        }
    }

    [Fact]
    public async Task Classify_FoldersRecursively_OneResultOrErrorPerPath_KeepsGoing_Exit5()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));
        string root = Directory.CreateTempSubdirectory("xray-cli-folders").FullName;
        try
        {
            // The same base name in two folders, a JPEG-named file in a subfolder, a text file the folder walk skips,
            // a text file named on the command line, a truncated PNG, and a path that does not exist.
            Directory.CreateDirectory(Path.Combine(root, "a"));
            Directory.CreateDirectory(Path.Combine(root, "b", "c"));
            await File.WriteAllBytesAsync(Path.Combine(root, "a", "x.png"), Images.Png(256, 256, 1));
            await File.WriteAllBytesAsync(Path.Combine(root, "b", "x.png"), Images.Png(300, 240, 2));
            await File.WriteAllBytesAsync(Path.Combine(root, "b", "c", "y.PNG"), Images.Png(240, 240, 3));
            await File.WriteAllBytesAsync(Path.Combine(root, "b", "broken.png"), Images.Png(256, 256, 4)[..60]);
            await File.WriteAllTextAsync(Path.Combine(root, "b", "readme.txt"), "not an image");
            string notes = Path.Combine(root, "notes.txt");
            await File.WriteAllTextAsync(notes, "not an image");
            string missing = Path.Combine(root, "missing.png");

            ToolRun table = await Xray("classify", Path.Combine(root, "a"), Path.Combine(root, "b"), notes, missing, "--server", HostPort(server.Address));
            ToolRun json = await Xray("classify", Path.Combine(root, "a"), Path.Combine(root, "b"), notes, missing, "--server", server.Address, "--json");

            Assert.Equal(5, table.Exit);
            Assert.DoesNotContain("   at ", table.Error);
            foreach (string good in new[] { Path.Combine(root, "a", "x.png"), Path.Combine(root, "b", "x.png"), Path.Combine(root, "b", "c", "y.PNG") })
            {
                Assert.Contains($"{good}: ", table.Output);
            }
            Assert.Equal(
            [
                $"error: {Path.Combine(root, "b", "broken.png")}: the server refused it (InvalidArgument): ",
                $"error: {notes}: not a PNG or JPEG image",
                $"error: {missing}: no such file or folder",
                "3 of 6 files failed",
            ], table.ErrorLines.Select(line => line.Contains("(InvalidArgument): ", StringComparison.Ordinal) ? line[..(line.IndexOf("(InvalidArgument): ", StringComparison.Ordinal) + 19)] : line));

            Assert.Equal(5, json.Exit);
            JsonElement[] entries = JsonDocument.Parse(json.Output).RootElement.EnumerateArray().ToArray();
            Assert.Equal(
                [Path.Combine(root, "a", "x.png"), Path.Combine(root, "b", "broken.png"), Path.Combine(root, "b", "c", "y.PNG"), Path.Combine(root, "b", "x.png"), notes, missing],
                entries.Select(e => e.GetProperty("path").GetString()));
            Assert.Equal([true, false, true, true, false, false], entries.Select(e => e.TryGetProperty("result", out _)));
            Assert.Equal([false, true, false, false, true, true], entries.Select(e => e.TryGetProperty("error", out _)));
            Assert.Equal(14, entries[0].GetProperty("result").GetProperty("probabilities").EnumerateObject().Count());
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public async Task CredentialsRefused_Exit6()
    {
        const string key = "radiology-key-0123456789";
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()), waitUntilServing: true,
            "--Security:RequireAuthentication=true", "--Security:ApiKeys:0:Name=radiology", $"--Security:ApiKeys:0:Key={key}");

        ToolRun none = await Xray("info", "--server", server.Address);
        ToolRun wrong = await Xray("info", "--server", server.Address, "--api-key", "not-a-key-0123456789");
        ToolRun right = await Xray("info", "--server", server.Address, "--api-key", key);

        none.AssertOneLineError(6, "the server refused the credentials (Unauthenticated)");
        wrong.AssertOneLineError(6, "the server refused the credentials (Unauthenticated)");
        Assert.True(right.Exit == 0, right.Error);
    }

    [Fact]
    public async Task Classify_NothingToSend_Exit3_WithoutCallingTheServer()
    {
        string empty = Directory.CreateTempSubdirectory("xray-cli-empty").FullName;
        try
        {
            // An unreachable server: the files are checked first.
            (await Xray("classify", "/nonexistent/x.png", "--server", "127.0.0.1:1")).AssertOneLineError(3, "/nonexistent/x.png: no such file or folder");
            (await Xray("classify", empty, "--server", "127.0.0.1:1")).AssertOneLineError(3, $"{empty}: no PNG or JPEG files in this folder");
            (await Xray("health", "--ca", "/nonexistent/ca.pem", "--server", "https://127.0.0.1:1")).AssertOneLineError(3, "--ca: no such file: /nonexistent/ca.pem");
        }
        finally
        {
            Directory.Delete(empty);
        }
    }
}
