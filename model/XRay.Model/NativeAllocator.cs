using System.Runtime.InteropServices;

namespace XRay.Model;

/// <summary>
/// Puts jemalloc under TorchSharp, for every program of this product that runs a network (server, trainer,
/// load tester). glibc malloc returns large tensor buffers to the kernel and re-faults their pages on every
/// forward; with jemalloc (and its decay disabled) DenseNet-121 at batch 32 ran 6.8x faster and a training step
/// 6x faster on the reference machine. LD_PRELOAD only works from process start, so the program re-executes
/// itself once, in place (execve: same PID, same arguments), with the allocator preloaded.
/// </summary>
/// <remarks>
/// Skipped when jemalloc is already loaded, not installed (Debian: <c>libjemalloc2</c>), the process has
/// re-executed once already, or <c>XRAY_ALLOCATOR=system</c> is set.
/// </remarks>
public static class NativeAllocator
{
    public const string DefaultMallocConf = "dirty_decay_ms:-1,muzzy_decay_ms:-1";
    private const string ReexecMarker = "XRAY_ALLOCATOR_REEXEC";

    private static readonly string[] JemallocCandidates =
    [
        "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
        "/usr/lib64/libjemalloc.so.2",
        "/usr/lib/libjemalloc.so.2",
        "/usr/local/lib/libjemalloc.so.2",
    ];

    /// <summary>Re-executes the process with jemalloc preloaded where that helps; returns only if it did not.</summary>
    public static void PreloadJemalloc()
    {
        if (!OperatingSystem.IsLinux()
            || Environment.GetEnvironmentVariable("XRAY_ALLOCATOR") == "system"
            || Environment.GetEnvironmentVariable(ReexecMarker) == "1"
            || IsJemallocLoaded()
            || Environment.ProcessPath is not { } executable)
        {
            return;
        }
        string? library = JemallocCandidates.FirstOrDefault(File.Exists);
        if (library is null)
        {
            return;
        }

        // /proc/self/cmdline is the exact argv this process got (NUL-terminated), so `dotnet x.dll` and an apphost both work.
        string[] argv = File.ReadAllText("/proc/self/cmdline").Split('\0')[..^1];
        var environment = Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .ToDictionary(entry => (string)entry.Key, entry => (string?)entry.Value ?? "");
        environment["LD_PRELOAD"] = environment.TryGetValue("LD_PRELOAD", out string? preload) && preload.Length > 0
            ? $"{library}:{preload}"
            : library;
        environment.TryAdd("MALLOC_CONF", DefaultMallocConf);
        environment[ReexecMarker] = "1";

        IntPtr[] nativeArgv = ToNative(argv);
        IntPtr[] nativeEnvironment = ToNative(environment.Select(pair => $"{pair.Key}={pair.Value}"));
        Execve(executable, nativeArgv, nativeEnvironment);

        // execve returned: it failed. Carry on with the system allocator.
        Console.Error.WriteLine($"warning: could not re-execute with {library} preloaded (errno {Marshal.GetLastPInvokeError()}); using the system allocator.");
    }

    /// <summary>Which allocator this process runs on, for the start-up log.</summary>
    public static string Describe()
    {
        if (!OperatingSystem.IsLinux()) return "system";
        if (IsJemallocLoaded()) return $"jemalloc (MALLOC_CONF={Environment.GetEnvironmentVariable("MALLOC_CONF")})";
        return Environment.GetEnvironmentVariable("XRAY_ALLOCATOR") == "system"
            ? "glibc malloc (XRAY_ALLOCATOR=system)"
            : "glibc malloc: install libjemalloc2 for much faster large-batch inference";
    }

    /// <summary>
    /// Gives the allocator's free pages back to the system: jemalloc purges every arena. With decay disabled jemalloc
    /// keeps freed pages for reuse forever, which is what makes repeated forwards fast (a decay of 10 s or 1 s made the
    /// server 5x slower here); call this when a burst is over and the process is idle. False when jemalloc is not loaded.
    /// </summary>
    public static bool ReleaseFreeMemory() => JemallocLoaded.Value && Mallctl("arena.4096.purge", 0, 0, 0, 0) == 0;

    /// <summary>
    /// jemalloc's own account of its memory (mallctl <c>stats.*</c>, refreshed first), or null when jemalloc is not
    /// loaded or was built without statistics. Tells growth from a leak: <see cref="JemallocStats.Allocated"/> is what
    /// the program holds; <see cref="JemallocStats.Dirty"/> is freed memory kept for reuse (decay disabled) that
    /// <see cref="ReleaseFreeMemory"/> gives back.
    /// </summary>
    public static JemallocStats? ReadStats()
    {
        if (!JemallocLoaded.Value)
        {
            return null;
        }
        unsafe
        {
            ulong epoch = 1;
            nuint epochLength = sizeof(ulong);
            if (Mallctl("epoch", (nint)(&epoch), (nint)(&epochLength), (nint)(&epoch), sizeof(ulong)) != 0)
            {
                return null;
            }
        }
        long? page = ReadSize("arenas.page");
        long? allocated = ReadSize("stats.allocated");
        long? active = ReadSize("stats.active");
        long? resident = ReadSize("stats.resident");
        long? retained = ReadSize("stats.retained");
        // Pages of all arenas (MALLCTL_ARENAS_ALL) freed and not yet given back.
        long? dirtyPages = ReadSize("stats.arenas.4096.pdirty");
        long? muzzyPages = ReadSize("stats.arenas.4096.pmuzzy");
        if (page is null || allocated is null || active is null || resident is null || retained is null || dirtyPages is null)
        {
            return null;
        }
        return new JemallocStats(allocated.Value, active.Value, resident.Value, retained.Value,
            (dirtyPages.Value + (muzzyPages ?? 0)) * page.Value);
    }

    private static unsafe long? ReadSize(string name)
    {
        nuint value = 0;
        nuint length = (nuint)sizeof(nuint);
        return Mallctl(name, (nint)(&value), (nint)(&length), 0, 0) == 0 ? (long)value : null;
    }

    private static readonly Lazy<bool> JemallocLoaded = new(() => OperatingSystem.IsLinux() && IsJemallocLoaded());

    private static bool IsJemallocLoaded() =>
        File.ReadLines("/proc/self/maps").Any(line => line.Contains("libjemalloc", StringComparison.Ordinal));

    // MALLCTL_ARENAS_ALL is 4096: "arena.4096.purge" purges all arenas. The preloaded library answers the soname.
    [DllImport("libjemalloc.so.2", EntryPoint = "mallctl")]
    private static extern int Mallctl([MarshalAs(UnmanagedType.LPUTF8Str)] string name, nint oldp, nint oldlenp, nint newp, nuint newlen);

    private static IntPtr[] ToNative(IEnumerable<string> strings) =>
        [.. strings.Select(Marshal.StringToCoTaskMemUTF8), IntPtr.Zero];

    [DllImport("libc.so.6", EntryPoint = "execve", SetLastError = true)]
    private static extern int Execve([MarshalAs(UnmanagedType.LPUTF8Str)] string path, IntPtr[] argv, IntPtr[] envp);
}

/// <summary>
/// jemalloc's statistics in bytes: <see cref="Allocated"/> held by the program; <see cref="Active"/> in pages holding
/// allocations; <see cref="Resident"/> in physically resident pages of the allocator (data and metadata);
/// <see cref="Retained"/> address space kept unmapped-but-reserved; <see cref="Dirty"/> freed pages kept for reuse.
/// </summary>
public readonly record struct JemallocStats(long Allocated, long Active, long Resident, long Retained, long Dirty);
