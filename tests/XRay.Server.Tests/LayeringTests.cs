using System.Reflection;
using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace XRay.Server.Tests;

/// <summary>
/// The layering written in README's Layout section: which project may reference which, which packages stay out of
/// the served and client side, and which way the server's folders point. A reference that breaks it fails here.
/// </summary>
public sealed partial class LayeringTests
{
    /// <summary>Every project and the projects it may reference directly (anything else is a layering break).</summary>
    private static readonly Dictionary<string, string[]> AllowedProjectReferences = new()
    {
        ["XRay.Contracts"] = [],
        ["XRay.Batching"] = [],
        ["XRay.Model"] = [],
        ["XRay.Model.Training"] = ["XRay.Model"],
        ["XRay.Train"] = ["XRay.Model.Training"],
        ["XRay.Server"] = ["XRay.Contracts", "XRay.Batching", "XRay.Model"],
        ["XRay.Client"] = ["XRay.Contracts"],
        ["XRay.Cli"] = ["XRay.Client"],
        ["XRay.LoadTest"] = ["XRay.Client"],
    };

    /// <summary>Packages a project must not carry, directly or through the projects it references.</summary>
    private static readonly Dictionary<string, string[]> ForbiddenPackages = new()
    {
        ["XRay.Server"] = ["TorchSharp.PyBridge"],
        ["XRay.Model"] = ["TorchSharp.PyBridge"],
        ["XRay.Client"] = ["TorchSharp", "libtorch-cpu-linux-x64", "SkiaSharp"],
        ["XRay.Cli"] = ["TorchSharp", "libtorch-cpu-linux-x64", "SkiaSharp"],
        ["XRay.LoadTest"] = ["TorchSharp", "libtorch-cpu-linux-x64", "TorchSharp.PyBridge"],
        ["XRay.Batching"] = ["TorchSharp", "Grpc.AspNetCore", "Grpc.Core.Api"],
    };

    /// <summary>The server's folders (namespaces) and those each may use: Hosting -> Grpc -> Model, Telemetry below all.</summary>
    private static readonly Dictionary<string, string[]> AllowedServerLayers = new()
    {
        ["Hosting"] = ["Grpc", "Model", "Telemetry"],
        ["Grpc"] = ["Model", "Telemetry"],
        ["Model"] = ["Telemetry"],
        ["Telemetry"] = [],
    };

    private static readonly string Root = RepositoryRoot();
    private static readonly Dictionary<string, Project> Projects = ReadProjects();

    [Fact]
    public void EveryProduct_ProjectIsInTheLayeringTable()
    {
        Assert.Equal(AllowedProjectReferences.Keys.Order(), Projects.Keys.Where(p => !p.EndsWith(".Tests", StringComparison.Ordinal)).Order());
    }

    [Fact]
    public void Projects_ReferenceOnlyTheProjectsBelowThem()
    {
        var breaks = AllowedProjectReferences
            .SelectMany(rule => Projects[rule.Key].ProjectReferences.Except(rule.Value).Select(bad => $"{rule.Key} -> {bad}"))
            .ToArray();
        Assert.True(breaks.Length == 0, "layering broken: " + string.Join(", ", breaks));
    }

    [Fact]
    public void ServedAndClientSide_CarryNoTrainingOrTorchPackages()
    {
        var breaks = ForbiddenPackages
            .SelectMany(rule => Closure(rule.Key).SelectMany(p => Projects[p].PackageReferences.Intersect(rule.Value).Select(bad => $"{rule.Key} (via {p}) -> {bad}")))
            .ToArray();
        Assert.True(breaks.Length == 0, "forbidden packages: " + string.Join(", ", breaks));
    }

    [Fact]
    public void ServerAndLoadTester_NeverReachTrainingCode()
    {
        Assert.DoesNotContain("XRay.Model.Training", Closure("XRay.Server"));
        Assert.DoesNotContain("XRay.Train", Closure("XRay.Server"));
        Assert.DoesNotContain("XRay.Model", Closure("XRay.LoadTest"));
        Assert.DoesNotContain("XRay.Server", Closure("XRay.LoadTest"));

        // The built server assembly agrees with its project file.
        string[] referenced = typeof(Hosting.XRayServerApp).Assembly.GetReferencedAssemblies().Select(a => a.Name!).ToArray();
        Assert.Contains("XRay.Model", referenced);
        Assert.DoesNotContain("XRay.Model.Training", referenced);
        Assert.DoesNotContain("TorchSharp.PyBridge", referenced);
    }

    [Fact]
    public void ServerFolders_UseOnlyTheLayersBelowThem()
    {
        Assembly server = typeof(Hosting.XRayServerApp).Assembly;
        // Type names declared in each layer's namespace.
        var typesByLayer = AllowedServerLayers.Keys.ToDictionary(
            layer => layer,
            layer => server.GetTypes()
                .Where(t => t.Namespace == $"XRay.Server.{layer}" && !t.IsNested && !t.Name.StartsWith('<'))
                .Select(t => t.Name.Split('`')[0])
                .ToHashSet());
        Assert.Contains("XRayMetrics", typesByLayer["Telemetry"]);
        Assert.Contains("ModelHost", typesByLayer["Model"]);

        var breaks = new List<string>();
        foreach (var (layer, allowed) in AllowedServerLayers)
        {
            string[] forbidden = AllowedServerLayers.Keys.Except(allowed).Where(other => other != layer).ToArray();
            foreach (string file in Directory.EnumerateFiles(Path.Combine(Root, "server", "XRay.Server", layer), "*.cs", SearchOption.AllDirectories))
            {
                string code = Code(File.ReadAllText(file));
                foreach (string other in forbidden)
                {
                    if (code.Contains($"XRay.Server.{other}", StringComparison.Ordinal)) breaks.Add($"{Path.GetFileName(file)} uses namespace {other}");
                    breaks.AddRange(typesByLayer[other]
                        .Where(type => Regex.IsMatch(code, $@"\b{Regex.Escape(type)}\b"))
                        .Select(type => $"{layer}/{Path.GetFileName(file)} uses {other}.{type}"));
                }
            }
        }
        Assert.True(breaks.Count == 0, "server layering broken: " + string.Join(", ", breaks));
    }

    [Fact]
    public void ServerLayerCheck_WouldCatchAnUpwardUse()
    {
        // The scan sees code, not comments: a mention in a comment is not a dependency.
        Assert.DoesNotContain("ModelHost", Code("// ModelHost is told\n/// <see cref=\"ModelHost\"/>\nint x = 1;"));
        Assert.Contains("ModelHost", Code("var host = new ModelHost(); // a use"));
    }

    /// <summary>The project and every project it reaches through references.</summary>
    private static HashSet<string> Closure(string project)
    {
        var seen = new HashSet<string>();
        var pending = new Stack<string>([project]);
        while (pending.TryPop(out string? next))
        {
            if (!seen.Add(next)) continue;
            foreach (string reference in Projects[next].ProjectReferences) pending.Push(reference);
        }
        return seen;
    }

    private static string Code(string source) => CommentPattern().Replace(source, "");

    [GeneratedRegex(@"//.*$", RegexOptions.Multiline)]
    private static partial Regex CommentPattern();

    private sealed record Project(string[] ProjectReferences, string[] PackageReferences);

    private static Dictionary<string, Project> ReadProjects()
    {
        var projects = new Dictionary<string, Project>();
        foreach (string folder in new[] { "protos", "model", "server", "clients", "loadtest", "tests" })
        {
            foreach (string path in Directory.EnumerateFiles(Path.Combine(Root, folder), "*.csproj", SearchOption.AllDirectories)
                .Where(p => !p.Contains($"{Path.DirectorySeparatorChar}node_modules{Path.DirectorySeparatorChar}", StringComparison.Ordinal)))
            {
                XDocument xml = XDocument.Load(path);
                string[] Items(string kind) => xml.Descendants(kind).Select(e => (string?)e.Attribute("Include")).OfType<string>().ToArray();
                projects[Path.GetFileNameWithoutExtension(path)] = new Project(
                    Items("ProjectReference").Select(p => Path.GetFileNameWithoutExtension(p.Replace('\\', '/'))).ToArray(),
                    Items("PackageReference"));
            }
        }
        return projects;
    }

    private static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "Serving.sln"))) return directory.FullName;
        }
        throw new InvalidOperationException($"no Serving.sln above {AppContext.BaseDirectory}");
    }
}
