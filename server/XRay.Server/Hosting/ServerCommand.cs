using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Options;
using XRay.Model;

namespace XRay.Server.Hosting;

/// <summary>
/// <c>xray-server</c> as a command: <c>--help</c>, then every start-up mistake it can find before the model loads
/// (unknown flags, bad settings, missing files, addresses in use) answered with one line and an exit code from
/// <see cref="ExitCodes"/> (README, "Exit codes"); an unexpected failure is one line, exit 1, its stack in the log.
/// </summary>
public static partial class ServerCommand
{
    private const string Name = "xray-server";

    /// <summary>Configuration keys the host itself reads (not sections of ours).</summary>
    private static readonly string[] HostKeys = ["urls", "environment", "contentRoot", "applicationName", "webroot", "AllowedHosts"];

    /// <summary>Sections of ours and of the host, beside whatever appsettings.json names at the top level.</summary>
    private static readonly string[] KnownSections =
        ["Logging", "Kestrel", "Model", "Batching", "Serving", "Transport", "Decoding", "Memory", "Security", "Telemetry"];

    /// <summary>Endpoint name → the shortcut that moves it.</summary>
    private static readonly Dictionary<string, string> EndpointFlags = new(StringComparer.OrdinalIgnoreCase)
    {
        ["Grpc"] = "--grpc-url",
        ["Metrics"] = "--metrics-url",
        ["Admin"] = "--admin-url",
    };

    public const string Usage = """
        xray-server: serves a multi-label chest X-ray classifier over gRPC (xray.v1.Classifier) with dynamic batching.

        Usage: xray-server [options]

        Options (shortcuts for the settings in appsettings.json):
          --model PATH                checkpoint folder; empty or absent: the built-in default model   (Model:Path)
          --runtime auto|torch|onnxruntime                                                             (Model:Runtime)
          --device auto|cpu|cuda                                                                       (Model:Device)
          --precision fp32|bf16                                                                        (Model:Precision)
          --warmup powers-of-two|all|measure|none   batch sizes run before SERVING                     (Model:Warmup)
          --max-batch-size N          images per batch, default 32                                     (Batching:MaxBatchSize)
          --max-queue-delay-us N      how long a partial batch may wait, default 0                     (Batching:MaxQueueDelayMicroseconds)
          --max-queue-size N          images waiting before RESOURCE_EXHAUSTED, default 1024           (Batching:MaxQueueSize)
          --model-instances N         batches that may run at once, default 1                          (Batching:ModelInstances)
          --max-pixels N              largest PNG/JPEG decoded (width x height)                        (Decoding:MaxPixels)
          --max-concurrent-decodes N  PNG/JPEG decodes at once; 0 = cores                              (Decoding:MaxConcurrentDecodes)
          --grpc-url URL              gRPC endpoint, default http://127.0.0.1:5051                     (Kestrel:Endpoints:Grpc:Url)
          --metrics-url URL           /metrics, /healthz, /readyz, default http://127.0.0.1:9464       (Kestrel:Endpoints:Metrics:Url)
          --admin-url URL             model swaps (xray.v1.ModelAdmin); off unless set                 (Kestrel:Endpoints:Admin:Url)
          --Section:Key=VALUE         any other setting, e.g. --Transport:MessageReadTimeoutSeconds=10
          -h, --help                  this text

        Settings also come from environment variables (Batching__MaxBatchSize=16) and appsettings.json beside the binary;
        README, "Configuration", lists them all. The server runs until Ctrl+C or SIGTERM.

        Exit codes: 0 stopped cleanly, 1 internal error, 2 bad option or setting, 3 model or certificate file not found
        or unreadable, 4 an address is already in use (README, "Exit codes").
        """;

    /// <summary>Runs the server to its end and returns the process's exit code.</summary>
    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        if (args.Any(arg => arg is "-h" or "--help" or "-?"))
        {
            output.WriteLine(Usage);
            return ExitCodes.Ok;
        }
        if (ArgumentProblem(args, AppSettingsSections()) is { } problem)
        {
            return Fail(error, ExitCodes.Usage, $"{problem} ({Name} --help lists the options)");
        }

        NativeAllocator.PreloadJemalloc();

        WebApplication app;
        try
        {
            app = XRayServerApp.Build(args);
        }
        catch (Exception e) when (SettingProblem(e) is { } setting)
        {
            return Fail(error, ExitCodes.Usage, setting);
        }

        if (CheckBeforeStart(app) is { } failure)
        {
            return Fail(error, failure.Code, failure.Message);
        }

        app.Logger.LogInformation("Native allocator: {Allocator}", NativeAllocator.Describe());
        try
        {
            app.Run();
            return Environment.ExitCode;
        }
        catch (IOException e) when (e.InnerException is AddressInUseException)
        {
            // Another process took the address between the check and the bind.
            return Fail(error, ExitCodes.Unreachable, e.Message);
        }
        catch (Exception e) when (SettingProblem(e) is { } setting)
        {
            return Fail(error, ExitCodes.Usage, setting);
        }
        catch (CryptographicException e)
        {
            // A certificate the checks above did not cover (the host has logged where it was loaded).
            return Fail(error, ExitCodes.NotFound, $"a certificate or key cannot be read: {e.Message.TrimEnd('.')}");
        }
        catch (Exception e)
        {
            app.Logger.LogCritical(e, "The server failed");
            return Fail(error, ExitCodes.Internal, $"internal error: {e.GetType().Name}: {FirstLine(e.Message)} (the stack trace is in the log above)");
        }
    }

    /// <summary>A start-up failure: the exit code and the one line that explains it.</summary>
    public sealed record Failure(int Code, string Message);

    /// <summary>
    /// What stops a built server from starting, found without loading the model: settings that fail validation,
    /// files that are not there, addresses another process holds. Null when none.
    /// </summary>
    public static Failure? CheckBeforeStart(WebApplication app)
    {
        try
        {
            // ValidateOnStart's checks, run now rather than inside the host (which would log them as a crash).
            app.Services.GetService<IStartupValidator>()?.Validate();
        }
        catch (Exception e) when (SettingProblem(e) is { } setting)
        {
            return new Failure(ExitCodes.Usage, setting);
        }
        if ((MissingFile(app.Configuration, app.Environment.ContentRootPath) ?? UnreadableCertificate(app.Configuration, app.Environment.ContentRootPath)) is { } file)
        {
            return new Failure(ExitCodes.NotFound, file);
        }
        return AddressInUse(app.Configuration) is { } inUse ? new Failure(ExitCodes.Unreachable, inUse) : null;
    }

    /// <summary>
    /// The first certificate setting whose file or text does not load as one (Kestrel's endpoint and default
    /// certificates, <c>Security:Tls</c>'s PEM text and client CA); null when all load. Kestrel would fail on it only
    /// when binding, with a stack trace.
    /// </summary>
    public static string? UnreadableCertificate(IConfiguration configuration, string contentRoot)
    {
        string Resolve(string path) => File.Exists(path) ? path : Path.Combine(contentRoot, path);

        IEnumerable<IConfigurationSection> certificates = configuration.GetSection("Kestrel:Endpoints").GetChildren()
            .Select(endpoint => endpoint.GetSection("Certificate"))
            .Concat(configuration.GetSection("Kestrel:Certificates").GetChildren());
        foreach (IConfigurationSection certificate in certificates)
        {
            if (certificate["Path"] is not { Length: > 0 } path)
            {
                continue;
            }
            string? keyPath = certificate["KeyPath"] is { Length: > 0 } key ? Resolve(key) : null;
            string? password = certificate["Password"];
            try
            {
                using X509Certificate2 loaded = keyPath is not null
                    ? string.IsNullOrEmpty(password) ? X509Certificate2.CreateFromPemFile(Resolve(path), keyPath) : X509Certificate2.CreateFromEncryptedPemFile(Resolve(path), password, keyPath)
                    : Path.GetExtension(path).ToLowerInvariant() is ".pfx" or ".p12"
                        ? X509CertificateLoader.LoadPkcs12FromFile(Resolve(path), password)
                        : X509CertificateLoader.LoadCertificateFromFile(Resolve(path));
            }
            catch (Exception e) when (e is CryptographicException or IOException or ArgumentException)
            {
                return $"{certificate.Path}: '{path}'{(keyPath is null ? "" : $" with key '{certificate["KeyPath"]}'")} cannot be read as a certificate: {e.Message.TrimEnd('.')}";
            }
        }

        IConfigurationSection tls = configuration.GetSection("Security:Tls");
        if (tls["CertificatePem"] is { Length: > 0 } certificatePem && tls["KeyPem"] is { Length: > 0 } keyPem)
        {
            try
            {
                using var loaded = X509Certificate2.CreateFromPem(certificatePem, keyPem);
            }
            catch (Exception e) when (e is CryptographicException or ArgumentException)
            {
                return $"Security:Tls:CertificatePem and KeyPem cannot be read as a certificate and its key: {e.Message.TrimEnd('.')}";
            }
        }
        foreach ((string setting, bool isFile) in new[] { ("ClientCaPath", true), ("ClientCaPem", false) })
        {
            if (tls[setting] is not { Length: > 0 } value)
            {
                continue;
            }
            var authorities = new X509Certificate2Collection();
            try
            {
                if (isFile)
                {
                    authorities.ImportFromPemFile(Resolve(value));
                }
                else
                {
                    authorities.ImportFromPem(value);
                }
            }
            catch (Exception e) when (e is CryptographicException or IOException or ArgumentException)
            {
                return $"Security:Tls:{setting} cannot be read as PEM certificates: {e.Message.TrimEnd('.')}";
            }
            finally
            {
                foreach (X509Certificate2 authority in authorities) authority.Dispose();
            }
            if (authorities.Count == 0)
            {
                return $"Security:Tls:{setting} holds no PEM certificate";
            }
        }
        return null;
    }

    /// <summary>The first argument that is not an option this server reads; null when all are.</summary>
    public static string? ArgumentProblem(IReadOnlyList<string> args, IEnumerable<string> extraSections)
    {
        var sections = new HashSet<string>(KnownSections.Concat(extraSections), StringComparer.OrdinalIgnoreCase);
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            string key;
            if (arg.StartsWith("--", StringComparison.Ordinal))
            {
                key = arg[2..];
            }
            else if (arg.StartsWith('-'))
            {
                return $"unknown option '{arg}'";
            }
            else if (arg.Contains('=', StringComparison.Ordinal))
            {
                key = arg;
            }
            else
            {
                return $"unexpected argument '{arg}'";
            }

            int equals = key.IndexOf('=', StringComparison.Ordinal);
            string name = equals >= 0 ? key[..equals] : key;
            if (equals < 0)
            {
                if (i + 1 >= args.Count)
                {
                    return $"{arg} needs a value";
                }
                i++;
            }
            if (name.Length == 0)
            {
                return $"unexpected argument '{arg}'";
            }
            bool known = ServingExtensions.SwitchMappings.Keys.Contains($"--{name}", StringComparer.OrdinalIgnoreCase)
                || HostKeys.Contains(name, StringComparer.OrdinalIgnoreCase)
                || (name.Split([":", "__"], StringSplitOptions.None) is [var section, _, ..] && sections.Contains(section));
            if (!known)
            {
                return $"unknown option '--{name}'";
            }
        }
        return null;
    }

    /// <summary>
    /// The first file setting (a configuration key ending in <c>Path</c>: the model, Kestrel's certificates, the
    /// client CA, the JWT signing key) naming something that is not there; null when all are.
    /// </summary>
    public static string? MissingFile(IConfiguration configuration, string contentRoot)
    {
        if (configuration["Model:Path"] is { Length: > 0 } model)
        {
            if (!Directory.Exists(model))
            {
                return File.Exists(model)
                    ? $"Model:Path '{model}' is a file; give the checkpoint folder (manifest.json and weights)"
                    : $"Model:Path '{model}': no such folder (a checkpoint folder; leave it empty for the built-in default model)";
            }
            if (!File.Exists(Path.Combine(model, Checkpoint.ManifestFileName)))
            {
                return $"Model:Path '{model}' has no {Checkpoint.ManifestFileName}: not a checkpoint folder";
            }
        }
        foreach ((string key, string? value) in configuration.AsEnumerable())
        {
            // Settings only (Section:Key): the environment's own variables (MSBuildSDKsPath, ...) are not ours to check.
            if (value is not { Length: > 0 } || !key.Contains(':', StringComparison.Ordinal) || !key.EndsWith("Path", StringComparison.Ordinal)
                || key.Equals("Model:Path", StringComparison.OrdinalIgnoreCase))
            {
                continue;
            }
            if (!File.Exists(value) && !File.Exists(Path.Combine(contentRoot, value)))
            {
                return $"{key} '{value}': no such file";
            }
        }
        return null;
    }

    /// <summary>The first configured endpoint whose address another socket holds ("127.0.0.1:5051 is already in use ..."); null when none.</summary>
    public static string? AddressInUse(IConfiguration configuration)
    {
        foreach (IConfigurationSection endpoint in configuration.GetSection("Kestrel:Endpoints").GetChildren())
        {
            if (endpoint["Url"] is not { Length: > 0 } url || ProbeAddress(url) is not { } address)
            {
                continue;
            }
            using var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            // As Kestrel binds: connections lingering in TIME_WAIT do not count, a listener does.
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            try
            {
                socket.Bind(address);
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
            {
                string flag = EndpointFlags.TryGetValue(endpoint.Key, out string? shortcut) ? shortcut : $"--Kestrel:Endpoints:{endpoint.Key}:Url";
                return $"{address} is already in use (Kestrel:Endpoints:{endpoint.Key}:Url, {url}): is another server running? Stop it or choose a free port with {flag}";
            }
            catch (SocketException)
            {
                // Not ours to judge here (e.g. an address this machine lacks): Kestrel reports it.
            }
        }
        return null;
    }

    /// <summary>The address Kestrel would bind for an endpoint URL; null for port 0, Unix sockets and what does not parse.</summary>
    private static IPEndPoint? ProbeAddress(string url)
    {
        BindingAddress binding;
        try
        {
            binding = BindingAddress.Parse(url);
        }
        catch (FormatException)
        {
            return null;
        }
        if (binding.IsUnixPipe || binding.Port <= 0)
        {
            return null;
        }
        IPAddress ip = binding.Host switch
        {
            "localhost" => IPAddress.Loopback,
            "*" or "+" => IPAddress.Any,
            _ when IPAddress.TryParse(binding.Host.Trim('[', ']'), out IPAddress? parsed) => parsed,
            _ => IPAddress.Any,
        };
        return new IPEndPoint(ip, binding.Port);
    }

    /// <summary>The one line naming a bad setting, for the exceptions configuration and options validation throw; null for others.</summary>
    public static string? SettingProblem(Exception exception) => exception switch
    {
        AggregateException aggregate when aggregate.InnerExceptions.All(inner => SettingProblem(inner) is not null) =>
            string.Join("; ", aggregate.InnerExceptions.Select(inner => SettingProblem(inner))),
        OptionsValidationException validation => string.Join("; ", validation.Failures.Select(failure => Describe(validation.OptionsType, failure))),
        // Binding: "Failed to convert configuration value 'abc' at 'Batching:MaxBatchSize' to type 'System.Int32'."
        InvalidOperationException invalid when ConversionFailure().Match(invalid.Message) is { Success: true } conversion =>
            $"{conversion.Groups["key"].Value}: '{conversion.Groups["value"].Value}' is not {TypeName(conversion.Groups["type"].Value)}",
        // Command-line parsing and Kestrel's endpoint configuration.
        FormatException format when format.StackTrace?.Contains("Configuration", StringComparison.Ordinal) == true => format.Message.TrimEnd('.'),
        _ => null,
    };

    private static string Describe(Type optionsType, string failure)
    {
        // "DataAnnotation validation failed for 'ModelOptions' members: 'Warmup' with the error: 'Model:Warmup must be ...'."
        Match match = DataAnnotationFailure().Match(failure);
        if (!match.Success)
        {
            return failure.TrimEnd('.');
        }
        string member = match.Groups["member"].Value;
        string message = match.Groups["error"].Value.TrimEnd('.');
        string? section = optionsType.GetField("SectionName")?.GetValue(null) as string;
        return message.Contains(':', StringComparison.Ordinal) || section is null ? message : $"{section}:{member}: {message}";
    }

    private static string TypeName(string type) => type switch
    {
        "System.Int32" or "System.Int64" => "a whole number",
        "System.Double" or "System.Single" => "a number",
        "System.Boolean" => "true or false",
        "System.TimeSpan" => "a time span (hh:mm:ss)",
        _ => $"a {type}",
    };

    [GeneratedRegex("^Failed to convert configuration value '(?<value>.*)' at '(?<key>[^']*)' to type '(?<type>[^']*)'", RegexOptions.Singleline)]
    private static partial Regex ConversionFailure();

    [GeneratedRegex("^DataAnnotation validation failed for '[^']*' members: '(?<member>[^']*)' with the error: '(?<error>.*)'\\.?$", RegexOptions.Singleline)]
    private static partial Regex DataAnnotationFailure();

    /// <summary>Top-level keys of appsettings.json beside the binary: sections other parts of the server read.</summary>
    private static IEnumerable<string> AppSettingsSections() =>
        new ConfigurationBuilder().SetBasePath(AppContext.BaseDirectory).AddJsonFile("appsettings.json", optional: true).Build()
            .GetChildren().Select(section => section.Key);

    private static string FirstLine(string text) => text.Split('\n', 2)[0].TrimEnd('\r');

    private static int Fail(TextWriter error, int code, string message)
    {
        error.WriteLine($"{Name}: {message}");
        return code;
    }
}
