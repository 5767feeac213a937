using System.Runtime.InteropServices;

namespace XRay.LoadTest;

/// <summary>
/// `bench` measures the raw model in this process and compares it with the server, which runs on jemalloc (see
/// the README's Allocator section: glibc malloc re-faults big tensor buffers on every forward). For a fair
/// comparison this process re-executes itself once with jemalloc preloaded, as the server does (execve: same
/// PID and arguments). Skipped when jemalloc is loaded or not installed, after one re-exec, or with
/// XRAY_ALLOCATOR=system.
/// </summary>
internal static class JemallocPreload
{
    private const string MallocConf = "dirty_decay_ms:-1,muzzy_decay_ms:-1";
    private const string ReexecMarker = "XRAY_LOADTEST_REEXEC";

    private static readonly string[] Candidates =
    [
        "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
        "/usr/lib64/libjemalloc.so.2",
        "/usr/lib/libjemalloc.so.2",
        "/usr/local/lib/libjemalloc.so.2",
    ];

    /// <summary>Re-executes with jemalloc where that applies; returns only if it did not.</summary>
    public static void Apply()
    {
        if (!OperatingSystem.IsLinux()
            || Environment.GetEnvironmentVariable("XRAY_ALLOCATOR") == "system"
            || Environment.GetEnvironmentVariable(ReexecMarker) == "1"
            || IsLoaded()
            || Environment.ProcessPath is not { } executable
            || Candidates.FirstOrDefault(File.Exists) is not { } library)
        {
            return;
        }
        string[] argv = File.ReadAllText("/proc/self/cmdline").Split('\0')[..^1];
        var environment = Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .ToDictionary(entry => (string)entry.Key, entry => (string?)entry.Value ?? "");
        environment["LD_PRELOAD"] = environment.TryGetValue("LD_PRELOAD", out string? preload) && preload.Length > 0 ? $"{library}:{preload}" : library;
        environment.TryAdd("MALLOC_CONF", MallocConf);
        environment[ReexecMarker] = "1";
        Execve(executable, ToNative(argv), ToNative(environment.Select(pair => $"{pair.Key}={pair.Value}")));
        Console.Error.WriteLine($"warning: could not re-execute with {library} preloaded (errno {Marshal.GetLastPInvokeError()}); the raw model runs on glibc malloc.");
    }

    public static string Describe() =>
        !OperatingSystem.IsLinux() ? "system"
        : IsLoaded() ? $"jemalloc (MALLOC_CONF={Environment.GetEnvironmentVariable("MALLOC_CONF")})"
        : "glibc malloc";

    private static bool IsLoaded() =>
        OperatingSystem.IsLinux() && File.ReadLines("/proc/self/maps").Any(line => line.Contains("libjemalloc", StringComparison.Ordinal));

    private static IntPtr[] ToNative(IEnumerable<string> strings) => [.. strings.Select(Marshal.StringToCoTaskMemUTF8), IntPtr.Zero];

    [DllImport("libc.so.6", EntryPoint = "execve", SetLastError = true)]
    private static extern int Execve([MarshalAs(UnmanagedType.LPUTF8Str)] string path, IntPtr[] argv, IntPtr[] envp);
}
