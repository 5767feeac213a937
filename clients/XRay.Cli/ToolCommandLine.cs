using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Parsing;
using System.Security.Cryptography;
using Grpc.Core;

namespace XRay.Cli;

/// <summary>
/// What <c>xray</c> and <c>xray-loadtest</c> share about the command line: <c>TOOL help</c>, <c>--help</c>, one-line
/// errors instead of stack traces, <c>--verbose</c>, and the exit codes of <see cref="ExitCodes"/> (README, "Exit codes").
/// </summary>
internal static class ToolCommandLine
{
    /// <summary>Parses and runs <paramref name="args"/>; every mistake ends in one line on <paramref name="error"/> and its exit code.</summary>
    public static async Task<int> InvokeAsync(RootCommand root, string tool, string[] args, TextWriter output, TextWriter error)
    {
        var verbose = new Option<bool>("--verbose") { Description = "On an internal error, print the full stack trace.", Recursive = true };
        root.Options.Add(verbose);
        // "xray help classify" is "xray classify --help".
        if (args is ["help", .. var rest]) args = [.. rest, "--help"];
        ParseResult result = root.Parse(args);
        var configuration = new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false };

        if (args.Length == 0)
        {
            // No command at all: the usage, on stderr, as a usage error.
            await root.Parse(["--help"]).InvokeAsync(new InvocationConfiguration { Output = error, Error = error });
            return ExitCodes.Usage;
        }
        if (result.Errors.Count > 0 && result.Action is not HelpAction)
        {
            error.WriteLine($"error: {UsageError(result, root)}; see '{tool}{CommandPath(result)} --help'");
            return ExitCodes.Usage;
        }
        try
        {
            return await result.InvokeAsync(configuration);
        }
        catch (OperationCanceledException)
        {
            error.WriteLine("interrupted");
            return 130;
        }
        catch (Exception ex)
        {
            // A bug, not a user's mistake: name it, and say where the rest is.
            error.WriteLine(result.GetValue(verbose)
                ? $"error: internal error: {ex}"
                : $"error: internal error ({ex.GetType().Name}: {FirstLine(ex.Message)}); run again with --verbose for the stack trace");
            return ExitCodes.Internal;
        }
    }

    /// <summary>
    /// What went wrong talking to a server or reading a local file, as one line and its exit code; null for an exception that
    /// is no user's mistake (a bug: <see cref="ExitCodes.Internal"/>). <paramref name="server"/> names the address used.
    /// </summary>
    public static (int Code, string Message)? Describe(Exception exception, string server) => exception switch
    {
        RpcException ex when SpeaksHttp1(ex) =>
            (ExitCodes.Unreachable, $"{server} speaks HTTP/1.1, not gRPC: is it the metrics port? The gRPC port is the server's Kestrel:Endpoints:Grpc (default 5051)"),
        RpcException ex when ex.StatusCode is StatusCode.Unauthenticated or StatusCode.PermissionDenied =>
            (ExitCodes.CredentialsRefused, $"the server refused the credentials ({ex.StatusCode}): {ex.Status.Detail}"),
        RpcException ex when ex.StatusCode == StatusCode.Unavailable =>
            (ExitCodes.Unreachable, $"cannot reach an XRay server at {server}: {Cause(ex)}"),
        RpcException ex when ex.StatusCode == StatusCode.DeadlineExceeded =>
            (ExitCodes.Unreachable, $"no answer from {server} before the deadline (--timeout): {ex.Status.Detail}"),
        RpcException ex => (ExitCodes.Refused, $"the server refused the request ({ex.StatusCode}): {ex.Status.Detail}"),
        // Not a missing assembly ("Could not load file or assembly 'X, Version=...'"): that is a broken installation.
        FileNotFoundException { FileName: var name } when name?.Contains(", Version=", StringComparison.Ordinal) != true => (ExitCodes.NotFound, exception.Message),
        DirectoryNotFoundException or UnauthorizedAccessException => (ExitCodes.NotFound, exception.Message),
        CryptographicException => (ExitCodes.NotFound, $"cannot read the certificate or key: {FirstLine(exception.Message)}"),
        // Addresses (ServerAddress), option values, certificates that do not go with the address.
        FormatException or ArgumentException => (ExitCodes.Usage, exception.Message),
        _ => null,
    };

    /// <summary>A gRPC call that reached an HTTP/1.1-only endpoint (the metrics port): Kestrel answers HTTP_1_1_REQUIRED.</summary>
    public static bool SpeaksHttp1(RpcException ex)
    {
        for (Exception? inner = ex.Status.DebugException; inner is not null; inner = inner.InnerException)
        {
            if (inner.Message.Contains("HTTP_1_1_REQUIRED", StringComparison.Ordinal)) return true;
        }
        return ex.Status.Detail.Contains("HTTP_1_1_REQUIRED", StringComparison.Ordinal);
    }

    /// <summary>The status detail, and the socket's reason when there is one ("Connection refused").</summary>
    private static string Cause(RpcException ex)
    {
        Exception? inner = ex.Status.DebugException;
        while (inner?.InnerException is not null) inner = inner.InnerException;
        return inner is null || ex.Status.Detail.Contains(inner.Message, StringComparison.Ordinal)
            ? ex.Status.Detail
            : $"{ex.Status.Detail} ({FirstLine(inner.Message)})";
    }

    private static string UsageError(ParseResult result, RootCommand root)
    {
        var commands = root.Subcommands.Where(c => !c.Hidden).Select(c => c.Name).ToArray();
        if (result.CommandResult.Command == root)
        {
            string? unknown = result.UnmatchedTokens.FirstOrDefault(t => !t.StartsWith('-'));
            if (unknown is not null) return $"unknown command '{unknown}' (the commands are {string.Join(", ", commands)})";
            if (result.UnmatchedTokens.Count == 0 && result.Errors.All(e => e.Message.StartsWith("Required command", StringComparison.Ordinal)))
            {
                return $"no command given (the commands are {string.Join(", ", commands)})";
            }
        }
        // System.CommandLine adds "Required command was not provided" to every other mistake at the root: the other one says more.
        ParseError first = result.Errors.FirstOrDefault(e => !e.Message.StartsWith("Required command", StringComparison.Ordinal)) ?? result.Errors[0];
        return first.Message.TrimEnd('.');
    }

    private static string CommandPath(ParseResult result)
    {
        var names = new List<string>();
        for (SymbolResult? symbol = result.CommandResult; symbol is CommandResult command && command.Parent is not null; symbol = command.Parent)
        {
            names.Insert(0, command.Command.Name);
        }
        return names.Count == 0 ? "" : " " + string.Join(' ', names);
    }

    private static string FirstLine(string text) => text.Split('\n')[0].TrimEnd('\r');

    /// <summary>A validator: the option's value must be a positive, finite number.</summary>
    public static void MustBePositive(Option<double> option, string unit) => option.Validators.Add(result =>
    {
        double value;
        try
        {
            value = result.GetValueOrDefault<double>();
        }
        catch (InvalidOperationException)
        {
            return; // Not a number: the parser says so already.
        }
        if (!(value > 0) || double.IsInfinity(value))
        {
            result.AddError($"{option.Name} must be a positive number of {unit}; got {value}");
        }
    });
}
