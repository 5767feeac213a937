using System.Text.Json;
using XRay.Cli;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

public sealed class CliTests
{
    private static async Task<(int Exit, string Output, string Error)> RunAsync(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int exit = await CliApp.RunAsync(args, output, error).WaitAsync(TestServer.Timeout);
        return (exit, output.ToString(), error.ToString());
    }

    [Fact]
    public async Task Classify_Files_PrintsOneResultPerFileAsJsonAndTable()
    {
        var backend = new FakeModelBackend();
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(backend));
        string directory = Directory.CreateTempSubdirectory("xray-cli").FullName;
        string a = Path.Combine(directory, "a.png"), b = Path.Combine(directory, "b.png");
        await File.WriteAllBytesAsync(a, Images.Png(256, 256, 1));
        await File.WriteAllBytesAsync(b, Images.Png(320, 240, 2));
        string tiny = Path.Combine(directory, "tiny.png");
        await File.WriteAllBytesAsync(tiny, Images.Png(16, 16, 3));

        var json = await RunAsync("classify", a, b, "--json", "--server", server.Address);
        var table = await RunAsync("classify", a, "--server", server.Address);
        var warned = await RunAsync("classify", tiny, "--server", server.Address);

        Assert.Equal(0, json.Exit);
        using var document = JsonDocument.Parse(json.Output);
        Assert.Equal([a, b], document.RootElement.EnumerateArray().Select(e => e.GetProperty("path").GetString()));
        Assert.Equal(14, document.RootElement[0].GetProperty("result").GetProperty("probabilities").EnumerateObject().Count());
        Assert.Equal(0, table.Exit);
        Assert.Contains($"{a}:", table.Output);
        Assert.Contains("Atelectasis", table.Output);
        // The model's notice under the table; an image that is not a radiograph: its warning, findings withheld.
        Assert.EndsWith("Not for clinical use." + Environment.NewLine, table.Output);
        Assert.Equal(0, warned.Exit);
        Assert.Contains("tiny.png: findings withheld", warned.Output);
        Assert.Contains("warning: not a chest radiograph: 16 x 16 pixels", warned.Output);
        Assert.DoesNotContain(warned.Output.Split('\n'), line => line.TrimEnd().EndsWith(" *", StringComparison.Ordinal));
        Directory.Delete(directory, recursive: true);
    }

    [Fact]
    public async Task InfoAndHealth_DescribeTheServer()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()));

        var info = await RunAsync("info", "--server", server.Address);
        var health = await RunAsync("health", "--server", server.Address);

        Assert.Equal(0, info.Exit);
        Assert.Contains("fake 1.0.0", info.Output);
        Assert.Equal(0, health.Exit);
        Assert.Equal("SERVING", health.Output.Trim());
    }

    [Fact]
    public async Task Classify_MissingFileOrUnreachableServer_ExplainsAndFails()
    {
        var missing = await RunAsync("classify", "/nonexistent/x.png", "--server", "http://127.0.0.1:1");
        string file = Path.GetTempFileName();
        var unreachable = await RunAsync("classify", file, "--server", "http://127.0.0.1:1", "--timeout", "5");
        File.Delete(file);

        Assert.Equal(3, missing.Exit);
        Assert.Contains("no such file", missing.Error);
        Assert.Equal(4, unreachable.Exit);
        Assert.Contains("cannot reach", unreachable.Error);
    }

    [Fact]
    public async Task LoadModel_SwapsTheServedModel_OrSaysWhyNot()
    {
        var catalog = new FakeModelCatalog(new Dictionary<string, XRay.Server.Model.IModelBackend>
        {
            [""] = new FakeModelBackend(name: "first", version: "1"),
            ["/models/second"] = new FakeModelBackend(name: "second", version: "2"),
        });
        await using var server = await TestServer.StartAsync(catalog, waitUntilServing: true, TestServer.AdminEndpointSetting);

        var loaded = await RunAsync("load-model", "/models/second", "--admin", server.AdminAddress!);
        var missing = await RunAsync("load-model", "/models/third", "--admin", server.AdminAddress!);
        var info = await RunAsync("info", "--server", server.Address);

        Assert.Equal((0, "serving second 2 (was first 1)"), (loaded.Exit, loaded.Output[..30]));
        Assert.Equal(5, missing.Exit);
        Assert.StartsWith("error: the model was not loaded (FailedPrecondition): The model at '/models/third' failed to load", missing.Error);
        Assert.Contains("second 2", info.Output);
    }
}
