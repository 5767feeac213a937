using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;

namespace XRay.LoadTest.Bench;

/// <summary>The repository's other tools (xray-server, xray-train), found where they were built and run as child processes.</summary>
internal static class ToolProcess
{
    private const int OutputLinesKept = 50;

    /// <summary>
    /// The tool <paramref name="name"/> built from <paramref name="project"/> (e.g. model/XRay.Train) in the repository above
    /// this tool, same configuration first: the apphost, else the .dll; null when none is built.
    /// </summary>
    public static string? FindBuilt(string project, string name)
    {
        string configuration = typeof(ToolProcess).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (!File.Exists(Path.Combine(directory.FullName, "Serving.sln"))) continue;
            string bin = Path.Combine(directory.FullName, project, "bin");
            foreach (string config in new[] { configuration, "Release", "Debug" }.Distinct())
            {
                foreach (string folder in new[] { Path.Combine(bin, config, "net10.0", RuntimeInformation.RuntimeIdentifier), Path.Combine(bin, config, "net10.0") })
                {
                    foreach (string candidate in new[] { Path.Combine(folder, name), Path.Combine(folder, name + ".dll") })
                    {
                        if (File.Exists(candidate)) return candidate;
                    }
                }
            }
            return null;
        }
        return null;
    }

    /// <summary>How to start <paramref name="path"/>: an apphost directly, a .dll through dotnet.</summary>
    public static ProcessStartInfo StartInfo(string path, IEnumerable<string> arguments)
    {
        bool viaDotnet = path.EndsWith(".dll", StringComparison.OrdinalIgnoreCase);
        var start = new ProcessStartInfo(viaDotnet ? "dotnet" : path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (viaDotnet) start.ArgumentList.Add(path);
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        return start;
    }

    /// <summary>Runs a tool to its end: returns its stdout; each stderr line goes to <paramref name="log"/>. Killed when cancelled.</summary>
    /// <exception cref="InvalidOperationException">It could not start or exited non-zero; the message has its last stderr lines.</exception>
    public static async Task<string> RunAsync(string path, IReadOnlyList<string> arguments, Action<string>? log, CancellationToken cancellationToken)
    {
        using var process = new Process { StartInfo = StartInfo(path, arguments) };
        var tail = new Queue<string>();
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            log?.Invoke(e.Data);
            lock (tail)
            {
                tail.Enqueue(e.Data);
                if (tail.Count > OutputLinesKept) tail.Dequeue();
            }
        };
        if (!process.Start()) throw new InvalidOperationException($"could not start {path}");
        process.BeginErrorReadLine();
        try
        {
            string output = await process.StandardOutput.ReadToEndAsync(cancellationToken).ConfigureAwait(false);
            await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            if (process.ExitCode != 0)
            {
                lock (tail) throw new InvalidOperationException($"{Path.GetFileName(path)} {arguments[0]} exited with code {process.ExitCode}:{Environment.NewLine}{string.Join(Environment.NewLine, tail)}");
            }
            return output;
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }
    }
}
