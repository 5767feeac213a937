using System.Diagnostics;

namespace XRay.Server.Tests.Infrastructure;

/// <summary>
/// A built tool (xray, xray-loadtest) run as users run it: its own process, <c>dotnet TOOL.dll args</c>, from the tool's own
/// build output (this test project references it, so it is built, with the same configuration), stdout and stderr captured,
/// bounded by <see cref="TestServer.Timeout"/>. XRAY_SERVER is not passed on.
/// </summary>
internal sealed record ToolRun(int Exit, string Output, string Error)
{
    /// <param name="project">The tool's project folder, from the repository root (clients/XRay.Cli).</param>
    /// <param name="tool">Its assembly name (xray).</param>
    public static async Task<ToolRun> StartAsync(string project, string tool, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        start.ArgumentList.Add(ToolPath(project, tool));
        foreach (string arg in args) start.ArgumentList.Add(arg);
        start.Environment.Remove("XRAY_SERVER");
        start.Environment.Remove("XRAY_ADMIN");
        using Process process = Process.Start(start)!;
        process.StandardInput.Close();
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TestServer.Timeout);
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{tool} {string.Join(' ', args)} ran past {TestServer.Timeout}");
        }
        return new ToolRun(process.ExitCode, await output, await error);
    }

    /// <summary>tests/X/bin/Release/net10.0/linux-x64/ for this test becomes PROJECT/bin/Release/net10.0/linux-x64/TOOL.dll.</summary>
    private static string ToolPath(string project, string tool)
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        var parts = new Stack<string>();
        while (directory is not null && directory.Name != "bin")
        {
            parts.Push(directory.Name);
            directory = directory.Parent;
        }
        Assert.NotNull(directory);
        string repository = directory.Parent!.Parent!.Parent!.FullName;
        string path = Path.Combine([repository, project, "bin", .. parts, tool + ".dll"]);
        Assert.True(File.Exists(path), $"{path} is not built");
        return path;
    }

    /// <summary>Lines written to stderr.</summary>
    public string[] ErrorLines => Error.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>The documented exit code and exactly one line, "error: ...", containing <paramref name="text"/>; no stack trace.</summary>
    public void AssertOneLineError(int exit, string text)
    {
        Assert.True(exit == Exit, $"exit {Exit}, expected {exit}; stderr:\n{Error}");
        Assert.DoesNotContain("   at ", Error);
        string line = Assert.Single(ErrorLines);
        Assert.StartsWith("error: ", line);
        Assert.Contains(text, line);
    }
}
