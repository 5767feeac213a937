using XRay.Server.Tests.Infrastructure;

namespace XRay.LoadTest.Tests;

/// <summary>
/// The built <c>xray-loadtest</c> in its own process with each mistake a new user makes: one line naming it, no stack trace,
/// the documented exit code (README, "Exit codes"). The server, when one is needed, is the real one with a fake model.
/// </summary>
public sealed class ProcessTests
{
    private static Task<ToolRun> LoadTest(params string[] args) => ToolRun.StartAsync("loadtest/XRay.LoadTest", "xray-loadtest", args);

    [Fact]
    public async Task Help_EverywhereAndAsACommand()
    {
        ToolRun help = await LoadTest("--help");
        ToolRun helpCommand = await LoadTest("help");
        ToolRun runHelp = await LoadTest("run", "--help");
        ToolRun nothing = await LoadTest();

        Assert.Equal((0, 0, 0), (help.Exit, helpCommand.Exit, runHelp.Exit));
        Assert.Contains("sweep", help.Output);
        Assert.Equal(help.Output, helpCommand.Output);
        Assert.Contains("--concurrency", runHelp.Output);
        Assert.Equal(2, nothing.Exit);
        Assert.Contains("Usage:", nothing.Error);
    }

    [Fact]
    public async Task UsageMistakes_OneLineAndExit2()
    {
        (await LoadTest("bogus")).AssertOneLineError(2, "unknown command 'bogus'");
        (await LoadTest("run", "--timeout", "0", "-t", "127.0.0.1:1")).AssertOneLineError(2, "--timeout must be a positive number of seconds; got 0");
        (await LoadTest("run", "--mode", "sideways", "-t", "127.0.0.1:1")).AssertOneLineError(2, "--mode must be one of closed, open");
        (await LoadTest("run", "-t", "localhost:http")).AssertOneLineError(2, "'localhost:http' is not a server address");
        (await LoadTest("sweep", "--levels", "1,x", "-t", "127.0.0.1:1")).AssertOneLineError(2, "--levels takes positive numbers");
    }

    [Fact]
    public async Task MissingInputs_Exit3()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));

        (await LoadTest("run", "-t", server.Address, "-n", "1", "--files", "/nonexistent/images")).AssertOneLineError(3, "--files: no such file or folder: /nonexistent/images");
        (await LoadTest("render", "/nonexistent/report.json", "-o", Path.GetTempPath())).AssertOneLineError(3, "/nonexistent/report.json");
        string notAReport = Path.GetTempFileName();
        try
        {
            await File.WriteAllTextAsync(notAReport, "hello");
            (await LoadTest("render", notAReport, "-o", Path.GetTempPath())).AssertOneLineError(3, "not a report written by xray-loadtest");
        }
        finally
        {
            File.Delete(notAReport);
        }
    }

    [Fact]
    public async Task WrongPortOrNoServer_Exit4_HostPortWorks()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));
        int port = new Uri(server.Address).Port;

        (await LoadTest("run", "-t", new Uri(server.MetricsAddress).Authority, "-n", "1")).AssertOneLineError(4, "speaks HTTP/1.1, not gRPC: is it the metrics port?");
        (await LoadTest("run", "-t", "127.0.0.1:1", "-n", "1")).AssertOneLineError(4, "cannot reach an XRay server at 127.0.0.1:1");
        ToolRun ok = await LoadTest("run", "-t", $"localhost:{port}", "-n", "4", "-c", "2", "--warmup", "0", "--no-progress");
        Assert.True(ok.Exit == 0, ok.Error);
        Assert.Contains("| c=2 |", ok.Output);
    }
}
