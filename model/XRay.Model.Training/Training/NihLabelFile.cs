namespace XRay.Model.Training;

/// <summary>
/// Reads NIH ChestX-ray14's label file, <c>Data_Entry_2017.csv</c> (Wang et al., 2017). Its header has a quirk: two
/// column names contain commas inside brackets (<c>OriginalImage[Width,Height]</c>,
/// <c>OriginalImagePixelSpacing[x,y]</c>) and are not quoted, so splitting the header on commas gives 11 fields, as
/// many as each data row holds (the full release adds a trailing comma, a 12th empty field, to every row). Columns
/// are found by name. <c>Finding Labels</c> holds findings separated by <c>|</c>, or <c>No Finding</c>.
/// </summary>
public static class NihLabelFile
{
    public const string ImageIndexColumn = "Image Index";
    public const string FindingLabelsColumn = "Finding Labels";
    public const string PatientIdColumn = "Patient ID";
    public const string NoFinding = "No Finding";

    /// <summary>
    /// Reads the label file. Images are looked up in <paramref name="imageDirectory"/> (default: <c>images/</c> beside
    /// the file). Every finding must be one of <paramref name="classNames"/> (default: the 14 NIH findings); all
    /// labels are hard 0/1.
    /// </summary>
    /// <exception cref="InvalidDataException">A required column is missing, a row is malformed, a finding is unknown, or an image is missing (unless <paramref name="skipMissingImages"/>).</exception>
    public static LabeledDataset Read(
        string csvPath,
        string? imageDirectory = null,
        IReadOnlyList<string>? classNames = null,
        bool skipMissingImages = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(csvPath);
        classNames ??= ChestXrayFindings.Nih14;
        imageDirectory ??= Path.Combine(Path.GetDirectoryName(Path.GetFullPath(csvPath))!, "images");
        var classIndex = classNames.Select((name, i) => (name, i)).ToDictionary(p => p.name, p => p.i, StringComparer.Ordinal);

        using var reader = new StreamReader(csvPath);
        var header = reader.ReadLine() ?? throw new InvalidDataException($"{csvPath} is empty.");
        var columns = header.TrimEnd('\r').Split(',');
        int Column(string name)
        {
            var index = Array.IndexOf(columns, name);
            return index >= 0
                ? index
                : throw new InvalidDataException(
                    $"{csvPath}: the header has no '{name}' column (found {columns.Length} fields: {string.Join(" | ", columns)}).");
        }

        var imageColumn = Column(ImageIndexColumn);
        var labelsColumn = Column(FindingLabelsColumn);
        var patientColumn = Column(PatientIdColumn);
        var needed = Math.Max(imageColumn, Math.Max(labelsColumn, patientColumn)) + 1;

        var images = new List<LabeledImage>();
        var missing = new List<string>();
        var lineNumber = 1;
        while (reader.ReadLine() is { } line)
        {
            lineNumber++;
            if (line.Length == 0)
            {
                continue;
            }

            var fields = line.TrimEnd('\r').Split(',');
            if (fields.Length < needed)
            {
                throw new InvalidDataException($"{csvPath}:{lineNumber}: {fields.Length} fields; at least {needed} expected.");
            }

            var labels = new float[classNames.Count];
            var findings = fields[labelsColumn].Trim();
            if (findings != NoFinding)
            {
                foreach (var finding in findings.Split('|', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
                {
                    if (!classIndex.TryGetValue(finding, out var c))
                    {
                        throw new InvalidDataException(
                            $"{csvPath}:{lineNumber}: unknown finding '{finding}'; known: {string.Join(", ", classNames)}, or '{NoFinding}'.");
                    }

                    labels[c] = 1f;
                }
            }

            var path = Path.Combine(imageDirectory, fields[imageColumn].Trim());
            if (!File.Exists(path))
            {
                missing.Add(path);
                continue;
            }

            images.Add(new LabeledImage(path, fields[patientColumn].Trim(), labels));
        }

        if (missing.Count > 0 && !skipMissingImages)
        {
            throw new InvalidDataException(
                $"{csvPath}: {missing.Count} listed image(s) are not in {imageDirectory}, e.g. {missing[0]}.");
        }

        return new LabeledDataset(classNames, images, $"NIH ChestX-ray14 label file {Path.GetFileName(csvPath)}");
    }
}
