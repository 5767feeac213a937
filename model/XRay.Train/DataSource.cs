using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using XRay.Model;
using XRay.Model.Training;

namespace XRay.Train;

/// <summary>Where labelled images come from, as given on the command line; recorded in the manifest so <c>evaluate</c> can find them again.</summary>
internal sealed record DataSource
{
    /// <summary><c>nih</c>, <c>csv</c> or <c>synthetic</c>.</summary>
    public required string Kind { get; init; }

    public string? Csv { get; init; }

    /// <summary>NIH: the image folder; generic CSV: the root relative paths are resolved against.</summary>
    public string? Images { get; init; }

    public IReadOnlyList<string>? Classes { get; init; }

    public UncertainLabelPolicy Uncertain { get; init; } = UncertainLabelPolicy.Ignore;

    public BlankLabelPolicy Blank { get; init; } = BlankLabelPolicy.Ignore;

    public int SyntheticCount { get; init; }

    public int SyntheticSeed { get; init; }

    public PatientSplit Split { get; init; } = new();

    public string Describe() => Kind switch
    {
        "nih" => $"NIH ChestX-ray14 label file {Csv}",
        "csv" => $"label file {Csv}",
        _ => $"{SyntheticCount} synthetic chest X-rays (seed {SyntheticSeed})",
    };

    public JsonNode ToJson() => JsonSerializer.SerializeToNode(this, Trainer.JsonOptions)!;

    public static DataSource? FromManifest(ModelManifest manifest) =>
        manifest.Training?["data"] is JsonObject data ? data.Deserialize<DataSource>(Trainer.JsonOptions) : null;

    /// <summary>
    /// This source with its label file found. A manifest records the path given at training time, relative to where
    /// training ran (the repository's root, for the default model): tried as given, then from each folder above the
    /// working directory and above this binary, so <c>evaluate --model default</c> works from anywhere in a checkout.
    /// </summary>
    /// <exception cref="FileNotFoundException">Nowhere; the message says which option gives it.</exception>
    public DataSource Locate()
    {
        if (Csv is null || File.Exists(Csv))
        {
            return this;
        }
        if (!Path.IsPathRooted(Csv))
        {
            foreach (var folder in Above(Environment.CurrentDirectory).Concat(Above(AppContext.BaseDirectory)))
            {
                var csv = Path.Combine(folder, Csv);
                if (File.Exists(csv))
                {
                    var images = Images is null || Path.IsPathRooted(Images) ? Images : Path.GetFullPath(Path.Combine(folder, Images));
                    return this with { Csv = Path.GetFullPath(csv), Images = images };
                }
            }
        }
        throw new FileNotFoundException(
            $"the model's data {Csv} was not found from here, above here or above the binary; give the label file with " +
            $"{(Kind == "nih" ? "--nih-csv" : "--csv")} PATH (the NIH sample: shared/data/nih-cxr14-sample/Data_Entry_2017.csv beside the repository)");
    }

    private static IEnumerable<string> Above(string folder)
    {
        for (var dir = new DirectoryInfo(folder).Parent; dir is not null; dir = dir.Parent)
        {
            yield return dir.FullName;
        }
    }

    /// <summary>Decodes the images and splits them by patient into train, validation and test (each possibly empty).</summary>
    public SplitSets Load(PreprocessingSpec spec, Action<string>? log = null)
    {
        var all = LoadAll(spec, log);
        using (all)
        {
            var parts = Split.Assign(all.PatientIds);
            ImageSet Part(SplitPart p) => all.Subset(Enumerable.Range(0, parts.Length).Where(i => parts[i] == p).ToArray());
            return new SplitSets(Part(SplitPart.Train), Part(SplitPart.Validation), Part(SplitPart.Test));
        }
    }

    /// <summary>Decodes (or renders) every image, unsplit.</summary>
    public ImageSet LoadAll(PreprocessingSpec spec, Action<string>? log = null)
    {
        if (Kind == "synthetic")
        {
            log?.Invoke($"rendering {SyntheticCount} synthetic images at {spec.CropSize} px");
            return ImageSet.Synthetic(new SyntheticChestXray(SyntheticSeed), 0, SyntheticCount, spec);
        }

        var dataset = Kind == "nih"
            ? NihLabelFile.Read(Csv!, Images, Classes)
            : LabelCsvFile.Read(Csv!, Images, Classes, Uncertain, Blank);
        log?.Invoke($"decoding {dataset.Images.Count} images from {Csv}");
        return ImageSet.Load(dataset, spec);
    }
}

internal sealed class SplitSets(ImageSet train, ImageSet validation, ImageSet test) : IDisposable
{
    public ImageSet Train { get; } = train;
    public ImageSet Validation { get; } = validation;
    public ImageSet Test { get; } = test;

    public ImageSet this[SplitPart part] => part switch
    {
        SplitPart.Train => Train,
        SplitPart.Validation => Validation,
        _ => Test,
    };

    public void Dispose()
    {
        Train.Dispose();
        Validation.Dispose();
        Test.Dispose();
    }
}

/// <summary>The command-line options that make a <see cref="DataSource"/>.</summary>
internal sealed class DataOptions
{
    private readonly Option<string?> _nihCsv = new("--nih-csv") { Description = "NIH ChestX-ray14 label file (Data_Entry_2017.csv); images in its images/ folder unless --images." };
    private readonly Option<string?> _csv = new("--csv") { Description = "Generic label file: image path column, optional patient column, one column per class (0/1, soft 0..1, -1 uncertain, empty)." };
    private readonly Option<string?> _images = new("--images") { Description = "Image folder (NIH) or root for relative paths (generic CSV; default: the CSV's folder)." };
    private readonly Option<string?> _classes = new("--classes") { Description = "Comma-separated class names, in output order (default: NIH's 14, or every class column of the CSV)." };
    private readonly Option<UncertainLabelPolicy> _uncertain = new("--uncertain") { Description = "Uncertain labels (-1): ignore (masked out of loss and metrics), ones, zeros.", DefaultValueFactory = _ => UncertainLabelPolicy.Ignore };
    private readonly Option<BlankLabelPolicy> _blank = new("--blank") { Description = "Empty label cells: ignore, or zero (CheXpert's 'not mentioned').", DefaultValueFactory = _ => BlankLabelPolicy.Ignore };
    private readonly Option<int> _synthetic = new("--synthetic") { Description = "Use this many synthetic chest X-rays instead of files.", DefaultValueFactory = _ => 0 };
    private readonly Option<int> _syntheticSeed = new("--synthetic-seed") { Description = "Seed of the synthetic images.", DefaultValueFactory = _ => 7 };
    private readonly Option<int> _splitSeed = new("--split-seed") { Description = "Seed of the patient-level split.", DefaultValueFactory = _ => 1 };
    private readonly Option<double> _valFraction = new("--val-fraction") { Description = "Fraction of patients for validation.", DefaultValueFactory = _ => 0.15 };
    private readonly Option<double> _testFraction = new("--test-fraction") { Description = "Fraction of patients held out for testing.", DefaultValueFactory = _ => 0.15 };

    public void AddTo(Command command)
    {
        foreach (var option in new Option[] { _nihCsv, _csv, _images, _classes, _uncertain, _blank, _synthetic, _syntheticSeed, _splitSeed, _valFraction, _testFraction })
        {
            command.Options.Add(option);
        }
    }

    /// <summary>The data named on the command line, or null when none was.</summary>
    public DataSource? From(ParseResult result)
    {
        var nih = result.GetValue(_nihCsv);
        var csv = result.GetValue(_csv);
        var synthetic = result.GetValue(_synthetic);
        var given = (nih is null ? 0 : 1) + (csv is null ? 0 : 1) + (synthetic > 0 ? 1 : 0);
        if (given > 1)
        {
            throw new ArgumentException("Give one of --nih-csv, --csv and --synthetic.");
        }

        if (given == 0)
        {
            return null;
        }

        var classes = result.GetValue(_classes)?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        return new DataSource
        {
            Kind = nih is not null ? "nih" : csv is not null ? "csv" : "synthetic",
            Csv = nih ?? csv,
            Images = result.GetValue(_images),
            Classes = classes,
            Uncertain = result.GetValue(_uncertain),
            Blank = result.GetValue(_blank),
            SyntheticCount = synthetic,
            SyntheticSeed = result.GetValue(_syntheticSeed),
            Split = new PatientSplit
            {
                Seed = result.GetValue(_splitSeed),
                ValidationFraction = result.GetValue(_valFraction),
                TestFraction = result.GetValue(_testFraction),
            },
        };
    }
}
