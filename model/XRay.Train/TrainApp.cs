using System.CommandLine;
using System.CommandLine.Parsing;
using Spectre.Console;

namespace XRay.Train;

/// <summary>The <c>xray-train</c> command line.</summary>
public static class TrainApp
{
    public static Task<int> RunAsync(string[] args, TextWriter? output = null, TextWriter? error = null)
    {
        output ??= System.Console.Out;
        error ??= System.Console.Error;
        var root = new RootCommand(
            "XRay Serving model tool: train and evaluate multi-label chest X-ray classifiers, import/export safetensors, " +
            "render synthetic data, measure throughput.")
        {
            TrainCommand.Create(output, error, args),
            EvaluateCommand.Create(output, error),
            CrossValidateCommand.Create(output, error),
            CalibrateCommand.Create(output, error),
            ModelIoCommands.Import(output, error),
            ModelIoCommands.ImportOnnx(output, error),
            ModelIoCommands.Export(output, error),
            ModelIoCommands.ExportOnnx(output, error),
            ModelIoCommands.Synth(output, error),
            BenchmarkCommand.Create(output, error),
            RawBenchmarkCommand.Create(output, error),
        };
        ParseResult parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            // One line: the first error a user can act on, and where the options are listed.
            var first = parsed.Errors.FirstOrDefault(e => !e.Message.StartsWith("Required command", StringComparison.Ordinal)) ?? parsed.Errors[0];
            string command = parsed.CommandResult.Command is RootCommand ? Name : $"{Name} {parsed.CommandResult.Command.Name}";
            var message = args.Length == 0 ? "no command given" : first.Message.TrimEnd('.');
            error.WriteLine($"{Name}: {message} ({command} --help lists the {(parsed.CommandResult.Command is RootCommand ? "commands" : "options")})");
            return Task.FromResult(ExitCodes.Usage);
        }
        return parsed.InvokeAsync(new InvocationConfiguration { Output = output, Error = error });
    }

    private const string Name = "xray-train";

    /// <summary>
    /// Runs a command body. A user's mistake is one line and its exit code (README, "Exit codes"): 2 a bad option or
    /// combination, 3 a file, folder or checkpoint that is missing or unreadable, 130 interrupted; anything else is a bug:
    /// one line naming it (exit 1), its stack trace in a file.
    /// </summary>
    internal static async Task<int> Guard(TextWriter error, Func<Task<int>> action)
    {
        try
        {
            return await action();
        }
        catch (Exception e) when (Unwrap(e) is OperationCanceledException)
        {
            error.WriteLine("interrupted");
            return 130;
        }
        catch (Exception e) when (ExitCodeOf(Unwrap(e)) is { } code)
        {
            error.WriteLine($"{Name}: {Unwrap(e).Message}");
            return code;
        }
        catch (Exception e)
        {
            var detail = Path.Combine(Path.GetTempPath(), $"{Name}-error-{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Environment.ProcessId}.txt");
            var where = $"the stack trace is in {detail}";
            try
            {
                File.WriteAllText(detail, e.ToString());
            }
            catch (IOException)
            {
                where = "the stack trace could not be written";
            }
            error.WriteLine($"{Name}: internal error: {e.GetType().Name}: {e.Message.Split('\n', 2)[0].TrimEnd()} ({where})");
            return ExitCodes.Internal;
        }
    }

    internal static IAnsiConsole Console(TextWriter output)
    {
        var console = ReferenceEquals(output, System.Console.Out)
            ? AnsiConsole.Console
            : AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output), Interactive = InteractionSupport.No, Ansi = AnsiSupport.No });
        if (!ReferenceEquals(output, System.Console.Out) || System.Console.IsOutputRedirected)
        {
            // Not a terminal (a file, a pipe, a log): Spectre would wrap tables at 80 columns ("Pleural_Thicken" / "ing").
            console.Profile.Width = RedirectedWidth;
        }
        return console;
    }

    /// <summary>Columns tables may use when the output is not a terminal.</summary>
    internal const int RedirectedWidth = 200;

    private static Exception Unwrap(Exception e) => e is AggregateException { InnerExceptions.Count: 1 } aggregate ? aggregate.InnerExceptions[0] : e;

    private static int? ExitCodeOf(Exception e) => e switch
    {
        FileNotFoundException or DirectoryNotFoundException or InvalidDataException or UnauthorizedAccessException
            or XRay.Model.InvalidImageException or XRay.Model.Onnx.OnnxImportException => ExitCodes.NotFound,
        ArgumentException or FormatException or InvalidOperationException => ExitCodes.Usage,
        _ => null,
    };
}
