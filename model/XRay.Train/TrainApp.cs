using System.CommandLine;
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
        return root.Parse(args).InvokeAsync(new InvocationConfiguration { Output = output, Error = error });
    }

    /// <summary>Runs a command body; expected failures print one line and map to exit codes (2 bad input, 130 interrupted).</summary>
    internal static async Task<int> Guard(TextWriter error, Func<Task<int>> action)
    {
        try
        {
            return await action();
        }
        catch (AggregateException e) when (e.InnerExceptions.Count == 1 && IsExpected(e.InnerExceptions[0]))
        {
            error.WriteLine($"error: {e.InnerExceptions[0].Message}");
            return 2;
        }
        catch (Exception e) when (IsExpected(e))
        {
            error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (OperationCanceledException)
        {
            error.WriteLine("interrupted");
            return 130;
        }
    }

    internal static IAnsiConsole Console(TextWriter output) =>
        ReferenceEquals(output, System.Console.Out)
            ? AnsiConsole.Console
            : AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output), Interactive = InteractionSupport.No, Ansi = AnsiSupport.No });

    private static bool IsExpected(Exception e) =>
        e is ArgumentException or FileNotFoundException or DirectoryNotFoundException or InvalidDataException
            or InvalidOperationException or XRay.Model.InvalidImageException or FormatException or XRay.Model.Onnx.OnnxImportException;
}
