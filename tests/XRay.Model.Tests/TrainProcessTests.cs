using System.Diagnostics;
using XRay.Train;

namespace XRay.Model.Tests;

/// <summary>
/// <c>xray-train</c> as users run it, in its own process from a folder outside the repository: each mistake is one line
/// on standard error naming the command, option or file, with the documented exit code (README, "Exit codes"), and no
/// stack trace.
/// </summary>
public sealed class TrainProcessTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    public static TheoryData<string[], int, string> Mistakes => new()
    {
        { [], 2, "xray-train: no command given (xray-train --help lists the commands)" },
        { ["bogus"], 2, "xray-train: Unrecognized command or argument 'bogus' (xray-train --help lists the commands)" },
        { ["train", "--bogus"], 2, "Unrecognized command or argument '--bogus' (xray-train train --help lists the options)" },
        { ["evaluate"], 2, "Option '--model' is required (xray-train evaluate --help lists the options)" },
        { ["train", "--out", "out"], 2, "--nih-csv, --csv or --synthetic" },
        { ["evaluate", "--model", "default", "--calibrate", "weird"], 2, "--calibrate must be max-f1, youden or none; got 'weird'" },
        { ["evaluate", "--model", "/nonexistent/checkpoint"], 3, "/nonexistent/checkpoint" },
        { ["train", "--csv", "/nonexistent/labels.csv", "--out", "out"], 3, "/nonexistent/labels.csv" },
    };

    [Theory]
    [MemberData(nameof(Mistakes))]
    public async Task Mistake_IsOneLineWithItsExitCode(string[] arguments, int exitCode, string message)
    {
        using var folder = new TempDirectory();
        var (code, output, error) = await RunAsync(arguments, folder.Path);

        Assert.True(exitCode == code, $"exit {code}\n{output}\n{error}");
        var line = Assert.Single(Lines(error));
        Assert.StartsWith("xray-train: ", line);
        Assert.Contains(message, line);
        Assert.DoesNotMatch(@"(?m)^\s+at \S", output + error);
    }

    [Fact]
    public async Task Help_ListsTheCommandsAndExitsZero()
    {
        using var folder = new TempDirectory();
        var (code, output, error) = await RunAsync(["--help"], folder.Path);

        Assert.Equal(0, code);
        Assert.Equal("", error);
        foreach (var command in new[] { "train", "evaluate", "crossval", "import", "export", "synth", "benchmark" })
        {
            Assert.Contains(command, output);
        }
    }

    [NihSampleFact]
    public async Task EvaluateDefault_FindsTheSampleFromAnyFolder_AndItsTableDoesNotWrapWhenRedirected()
    {
        // The default model's manifest names its data relative to the repository's root; this runs from elsewhere.
        using var folder = new TempDirectory();
        var (code, output, error) = await RunAsync(["evaluate", "--model", "default", "--on", "all", "--bootstrap", "20", "--report", "report"], folder.Path);

        Assert.True(code == 0, $"exit {code}\n{output}\n{error}");
        // Redirected output is not a terminal: the table keeps each row on one line, wider than 80 columns.
        var row = Assert.Single(Lines(output), l => l.Contains("Pleural_Thickening", StringComparison.Ordinal));
        Assert.True(row.Length > 80, row);
        Assert.Contains("mean AUROC", output);
        Assert.True(File.Exists(Path.Combine(folder.Path, "report", "roc.png")));
    }

    [Fact]
    public void RocCurves_OfFourteenClasses_AllLookDifferent()
    {
        var styles = Enumerable.Range(0, 14).Select(EvaluationReport.CurveStyle).ToArray();

        Assert.Equal(14, styles.Distinct().Count());
        // Neither colour nor marker alone repeats within the first ten; past ten the line pattern changes too.
        Assert.Equal(10, styles.Take(10).Select(s => s.Color).Distinct().Count());
        Assert.Equal(14, styles.Select(s => s.Marker).Distinct().Count());
        Assert.All(styles.Skip(10), s => Assert.NotEqual(styles[0].Pattern, s.Pattern));
    }

    [Fact]
    public void ManifestDataNotFound_SaysWhichOptionGivesIt()
    {
        var source = new DataSource { Kind = "nih", Csv = "../nowhere-such-folder/Data_Entry_2017.csv" };

        var error = Assert.Throws<FileNotFoundException>(() => source.Locate());
        Assert.Contains("../nowhere-such-folder/Data_Entry_2017.csv", error.Message);
        Assert.Contains("--nih-csv PATH", error.Message);
    }

    private static string[] Lines(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>Runs the built <c>xray-train</c> (beside the tests) in <paramref name="workingDirectory"/>; bounded.</summary>
    private static async Task<(int Code, string Output, string Error)> RunAsync(string[] arguments, string workingDirectory)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "xray-train.dll"));
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        try
        {
            await process.WaitForExitAsync().WaitAsync(Timeout);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
        return (process.ExitCode, await output.WaitAsync(Timeout), await error.WaitAsync(Timeout));
    }
}
