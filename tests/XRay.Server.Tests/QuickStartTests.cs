using System.Diagnostics;
using System.Text.RegularExpressions;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>
/// The README's quick start, pasted as far as a test can: its commands are read from the README itself, the server is
/// the built <c>xray-server</c> on free loopback ports, and every other command runs the built tool it names, from the
/// repository's root, against that server.
/// </summary>
[Collection(nameof(ServerProcessCollection))]
public sealed partial class QuickStartTests
{
    private const string ServerCommand = "dotnet run -c Release --project server/XRay.Server";
    private const string TestCommand = "dotnet test Serving.sln -c Release";
    private const string ReadmeAddress = "http://127.0.0.1:5051";

    /// <summary>
    /// The built tools the quick start may run, by project: each project's own build output (the README's table of
    /// binaries), in this test's configuration. Every one is built before this test (XRay.Server.Tests.csproj).
    /// </summary>
    private static readonly Dictionary<string, string> Tools = new[]
    {
        ("server/XRay.Server", "xray-server"), ("clients/XRay.Cli", "xray"), ("loadtest/XRay.LoadTest", "xray-loadtest"),
    }.ToDictionary(tool => tool.Item1, tool => Path.Combine(
        AppContext.BaseDirectory.Replace(Path.Combine("tests", "XRay.Server.Tests"), tool.Item1, StringComparison.Ordinal), tool.Item2));

    [Fact]
    public void Readme_StartsWithTheTwoCommands_AndEveryQuickStartCommandIsOneWeRun()
    {
        string readme = File.ReadAllText(Path.Combine(Repository.Root, "README.md"));
        List<string[]> blocks = QuickStartBlocks(readme);

        // The first code block, before any section: start the server, run the tests.
        Assert.True(readme.IndexOf("```bash", StringComparison.Ordinal) < readme.IndexOf("\n## ", StringComparison.Ordinal));
        Assert.Equal([ServerCommand, TestCommand], blocks[0]);
        // CI runs exactly the README's test command.
        Assert.Contains(TestCommand + " ", File.ReadAllText(Path.Combine(Repository.Root, ".ci", "run")));

        List<ToolRun> runs = ToolRuns(blocks);
        Assert.Contains(runs, run => run.Project == "clients/XRay.Cli" && run.Arguments[0] == "classify");
        Assert.Contains(runs, run => run.Project == "loadtest/XRay.LoadTest");
        Assert.All(runs, run => Assert.True(Tools.ContainsKey(run.Project), $"the quick start runs {run.Project}, which this test cannot run"));

        // The table of built tools: each path is the project's build output named as the project names its assembly.
        string section = Section(readme);
        MatchCollection rows = ToolRow().Matches(section);
        Assert.Equal(4, rows.Count);
        foreach (Match row in rows)
        {
            string tool = row.Groups["tool"].Value, project = row.Groups["project"].Value;
            Assert.Equal($"{project}/bin/Release/net10.0/linux-x64/{tool}", row.Groups["binary"].Value);
            string csproj = Assert.Single(Directory.GetFiles(Path.Combine(Repository.Root, project), "*.csproj"));
            Assert.Contains($"<AssemblyName>{tool}</AssemblyName>", File.ReadAllText(csproj));
        }

        // The dashboard's compose file.
        Match compose = Regex.Match(section, @"docker compose -f (?<file>\S+) up");
        Assert.True(compose.Success, "the quick start shows the dashboard");
        Assert.True(File.Exists(Path.Combine(Repository.Root, compose.Groups["file"].Value)));
    }

    [QuickStartFact]
    public async Task QuickStartCommands_Succeed_AgainstTheBuiltServer()
    {
        string readme = File.ReadAllText(Path.Combine(Repository.Root, "README.md"));
        List<string[]> blocks = QuickStartBlocks(readme);
        string[] serverArguments = Arguments(blocks[0][0]);

        // The README's server command (its arguments, none today) on free ports instead of 5051 and 9464.
        using var server = ServerProcess.Start(serverArguments);
        await server.WaitUntilServingAsync();

        foreach (ToolRun run in ToolRuns(blocks))
        {
            string[] arguments = run.Arguments.Select(argument => Localise(argument, server.Address)).ToArray();
            (int code, string output) = await RunAsync(Tools[run.Project], arguments, server.Address);

            string shown = $"{run.Project} {string.Join(' ', run.Arguments)}: exit {code}\n{output}";
            Assert.True(code == 0, shown);
            Assert.DoesNotMatch(@"(?m)^\s+at \S", output);
            if (run.Arguments[0] == "classify")
            {
                // The sample image's findings come back, one probability per finding.
                Assert.Contains("Effusion", output);
                Assert.Contains("Atelectasis", output);
            }
            if (run.Project == "loadtest/XRay.LoadTest")
            {
                Assert.Matches(@"p99", output);
            }
        }

        Assert.False(server.HasExited, server.Output);
    }

    /// <summary>A <c>dotnet run -c Release --project P -- ARGS</c> line of the quick start.</summary>
    private sealed record ToolRun(string Project, string[] Arguments);

    /// <summary>The code blocks from the README's start to the end of its "Quick start" section, as command lines.</summary>
    private static List<string[]> QuickStartBlocks(string readme) =>
        CodeBlock().Matches(Section(readme, includeIntro: true))
            .Select(block => block.Groups["body"].Value.Split('\n')
                .Select(line => line.Trim())
                .Where(line => line.Length > 0 && !line.StartsWith('#'))
                .ToArray())
            .ToList();

    private static string Section(string readme, bool includeIntro = false)
    {
        int start = readme.IndexOf("\n## Quick start", StringComparison.Ordinal);
        Assert.True(start > 0, "README has a \"Quick start\" section");
        int end = readme.IndexOf("\n## ", start + 1, StringComparison.Ordinal);
        return readme[(includeIntro ? 0 : start)..(end < 0 ? readme.Length : end)];
    }

    /// <summary>Every command after the first block's two: each must run a tool through <c>dotnet run</c>.</summary>
    private static List<ToolRun> ToolRuns(List<string[]> blocks)
    {
        var runs = new List<ToolRun>();
        foreach (string line in blocks.Skip(1).SelectMany(block => block))
        {
            Match match = DotnetRun().Match(line);
            Assert.True(match.Success, $"a quick-start command this test cannot run: {line}");
            runs.Add(new ToolRun(match.Groups["project"].Value, Arguments(match.Groups["arguments"].Value)));
        }
        return runs;
    }

    private static string[] Arguments(string line)
    {
        Match run = DotnetRun().Match(line);
        string arguments = run.Success ? run.Groups["arguments"].Value : line == ServerCommand ? "" : line;
        return arguments.Split(' ', StringSplitOptions.RemoveEmptyEntries);
    }

    /// <summary>The README's address becomes the test server's; <c>../shared/data/…</c> is found above the repository.</summary>
    private static string Localise(string argument, string address)
    {
        if (argument.StartsWith("../shared/data/", StringComparison.Ordinal))
        {
            return Repository.SharedData(argument["../shared/data/".Length..])
                ?? throw new InvalidOperationException($"{argument} is not beside the repository or above it");
        }
        return argument.Replace(ReadmeAddress, address, StringComparison.Ordinal);
    }

    /// <summary>Runs a built tool from the repository's root, <c>XRAY_SERVER</c> pointing at the test server; bounded.</summary>
    private static async Task<(int Code, string Output)> RunAsync(string binary, string[] arguments, string address)
    {
        Assert.True(File.Exists(binary), $"{binary} is not built (dotnet build -c Release)");
        var start = new ProcessStartInfo(binary)
        {
            WorkingDirectory = Repository.Root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            Environment = { ["XRAY_SERVER"] = address },
        };
        foreach (string argument in arguments) start.ArgumentList.Add(argument);

        using var process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        try
        {
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
        return (process.ExitCode, await output.WaitAsync(TestServer.Timeout) + await error.WaitAsync(TestServer.Timeout));
    }

    [GeneratedRegex("```bash\n(?<body>.*?)```", RegexOptions.Singleline)]
    private static partial Regex CodeBlock();

    [GeneratedRegex(@"^dotnet run -c Release --project (?<project>\S+) -- (?<arguments>.*)$")]
    private static partial Regex DotnetRun();

    [GeneratedRegex(@"^\| `(?<tool>xray[a-z-]*)` \| `(?<project>[^`]+)` \| `(?<binary>[^`]+)` \|$", RegexOptions.Multiline)]
    private static partial Regex ToolRow();

    /// <summary>Runs where the NIH sample is beside the repository or above it (the quick start classifies one of its images).</summary>
    private sealed class QuickStartFactAttribute : FactAttribute
    {
        public QuickStartFactAttribute()
        {
            if (Repository.SharedData("nih-cxr14-sample/images") is null)
            {
                Skip = $"shared/data/nih-cxr14-sample/images was not found above {Repository.Root}.";
            }
        }
    }

    /// <summary>The repository this test was built from, and the shared data beside it.</summary>
    private static class Repository
    {
        public static readonly string Root = FindRoot();

        private static string FindRoot()
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "Serving.sln")) && File.Exists(Path.Combine(dir.FullName, "README.md")))
                {
                    return dir.FullName;
                }
            }
            throw new InvalidOperationException($"no repository root (Serving.sln) above {AppContext.BaseDirectory}");
        }

        /// <summary><c>shared/data/RELATIVE</c> beside the repository (as <c>../shared/data</c>) or above it; null when absent.</summary>
        public static string? SharedData(string relative)
        {
            for (var dir = new DirectoryInfo(Root).Parent; dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, "shared", "data", relative);
                if (File.Exists(candidate) || Directory.Exists(candidate))
                {
                    return candidate;
                }
            }
            return null;
        }
    }
}
