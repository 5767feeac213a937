using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace XRay.Model.Training;

/// <summary>What an uncertain label (-1, as in CheXpert; Irvin et al., 2019) becomes.</summary>
public enum UncertainLabelPolicy
{
    /// <summary>U-Ignore: left out of the loss (masked) and of the metrics.</summary>
    Ignore,

    /// <summary>U-Ones: treated as positive.</summary>
    Ones,

    /// <summary>U-Zeros: treated as negative.</summary>
    Zeros,
}

/// <summary>What an empty label cell becomes.</summary>
public enum BlankLabelPolicy
{
    /// <summary>Not labelled: masked out like an ignored label.</summary>
    Ignore,

    /// <summary>Negative, as CheXpert's "not mentioned" is usually read.</summary>
    Zero,
}

/// <summary>
/// A generic label file: a CSV (RFC 4180 quoting) with a header, one column holding the image path (named
/// <c>path</c>, <c>image</c>, <c>image_path</c> or <c>filename</c>, any case; CheXpert's <c>Path</c> matches),
/// an optional patient column (<c>patient</c>, <c>patient_id</c>, <c>Patient ID</c>), and one column per class
/// holding 0/1 (hard), a value in [0, 1] (soft), -1 (uncertain, see <see cref="UncertainLabelPolicy"/>) or nothing.
/// Without a patient column the patient is taken from a <c>patientNNNN</c> path segment (CheXpert's layout), or
/// else each image is its own patient.
/// </summary>
public static partial class LabelCsvFile
{
    private static readonly string[] PathColumns = ["path", "image", "image_path", "filename", "image index"];
    private static readonly string[] PatientColumns = ["patient", "patient_id", "patient id", "patientid"];

    /// <param name="csvPath">The label file.</param>
    /// <param name="imageRoot">Relative image paths are resolved against it (default: the CSV's folder).</param>
    /// <param name="classNames">Class columns, in output order (default: every column but path and patient).</param>
    /// <param name="uncertain">What -1 becomes.</param>
    /// <param name="blank">What an empty cell becomes.</param>
    /// <exception cref="InvalidDataException">Missing columns, a malformed row, or a label outside {-1} ∪ [0, 1].</exception>
    public static LabeledDataset Read(
        string csvPath,
        string? imageRoot = null,
        IReadOnlyList<string>? classNames = null,
        UncertainLabelPolicy uncertain = UncertainLabelPolicy.Ignore,
        BlankLabelPolicy blank = BlankLabelPolicy.Ignore)
    {
        ArgumentException.ThrowIfNullOrEmpty(csvPath);
        imageRoot ??= Path.GetDirectoryName(Path.GetFullPath(csvPath))!;
        var rows = ParseCsv(File.ReadAllText(csvPath), csvPath);
        if (rows.Count == 0)
        {
            throw new InvalidDataException($"{csvPath} is empty.");
        }

        var header = rows[0].Select(h => h.Trim()).ToArray();
        var pathColumn = Array.FindIndex(header, h => PathColumns.Contains(h.ToLowerInvariant()));
        if (pathColumn < 0)
        {
            throw new InvalidDataException(
                $"{csvPath}: no image path column; name one of {string.Join(", ", PathColumns)} (header: {string.Join(", ", header)}).");
        }

        var patientColumn = Array.FindIndex(header, h => PatientColumns.Contains(h.ToLowerInvariant()));
        classNames ??= header.Where((_, i) => i != pathColumn && i != patientColumn).ToArray();
        if (classNames.Count == 0)
        {
            throw new InvalidDataException($"{csvPath}: no class columns besides the image path.");
        }

        var classColumns = classNames.Select(name =>
        {
            var index = Array.IndexOf(header, name);
            return index >= 0
                ? index
                : throw new InvalidDataException($"{csvPath}: no column for class '{name}' (header: {string.Join(", ", header)}).");
        }).ToArray();

        var images = new List<LabeledImage>(rows.Count - 1);
        for (var r = 1; r < rows.Count; r++)
        {
            var row = rows[r];
            var lineNumber = r + 1;
            if (row.Length == 1 && row[0].Length == 0)
            {
                continue; // blank line
            }

            if (row.Length < header.Length)
            {
                throw new InvalidDataException($"{csvPath}: row {lineNumber} has {row.Length} fields; the header has {header.Length}.");
            }

            var labels = new float[classNames.Count];
            for (var c = 0; c < labels.Length; c++)
            {
                labels[c] = ParseLabel(row[classColumns[c]], uncertain, blank)
                    ?? throw new InvalidDataException(
                        $"{csvPath}: row {lineNumber}, column '{classNames[c]}': '{row[classColumns[c]]}' is not a label " +
                        "(expected 0..1, -1 for uncertain, or empty).");
            }

            var relative = row[pathColumn].Trim();
            var path = Path.IsPathRooted(relative) ? relative : Path.GetFullPath(Path.Combine(imageRoot, relative));
            var patient = patientColumn >= 0 && row[patientColumn].Trim().Length > 0
                ? row[patientColumn].Trim()
                : PatientSegment().Match(relative) is { Success: true } m ? m.Value : relative;
            images.Add(new LabeledImage(path, patient, labels));
        }

        return new LabeledDataset(classNames, images, $"label file {Path.GetFileName(csvPath)}");
    }

    /// <summary>The label a cell holds under the policies; NaN means ignored; null means malformed.</summary>
    public static float? ParseLabel(string cell, UncertainLabelPolicy uncertain, BlankLabelPolicy blank)
    {
        var text = cell.Trim();
        if (text.Length == 0)
        {
            return blank == BlankLabelPolicy.Zero ? 0f : float.NaN;
        }

        if (!float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || float.IsNaN(value))
        {
            return null;
        }

        if (value == -1f)
        {
            return uncertain switch
            {
                UncertainLabelPolicy.Ones => 1f,
                UncertainLabelPolicy.Zeros => 0f,
                _ => float.NaN,
            };
        }

        return value is >= 0f and <= 1f ? value : null;
    }

    /// <summary>RFC 4180: fields separated by commas, optionally quoted with "" as an escaped quote; CRLF or LF.</summary>
    internal static List<string[]> ParseCsv(string text, string name)
    {
        var rows = new List<string[]>();
        var fields = new List<string>();
        var field = new StringBuilder();
        var quoted = false;
        var atFieldStart = true;
        for (var i = 0; i < text.Length; i++)
        {
            var ch = text[i];
            if (quoted)
            {
                if (ch == '"')
                {
                    if (i + 1 < text.Length && text[i + 1] == '"')
                    {
                        field.Append('"');
                        i++;
                    }
                    else
                    {
                        quoted = false;
                    }
                }
                else
                {
                    field.Append(ch);
                }

                continue;
            }

            switch (ch)
            {
                case '"' when atFieldStart:
                    quoted = true;
                    atFieldStart = false;
                    break;
                case ',':
                    fields.Add(field.ToString());
                    field.Clear();
                    atFieldStart = true;
                    break;
                case '\r':
                    break;
                case '\n':
                    fields.Add(field.ToString());
                    field.Clear();
                    rows.Add([.. fields]);
                    fields.Clear();
                    atFieldStart = true;
                    break;
                default:
                    field.Append(ch);
                    atFieldStart = false;
                    break;
            }
        }

        if (quoted)
        {
            throw new InvalidDataException($"{name}: a quoted field is not closed.");
        }

        if (field.Length > 0 || fields.Count > 0)
        {
            fields.Add(field.ToString());
            rows.Add([.. fields]);
        }

        return rows;
    }

    [GeneratedRegex(@"patient\d+", RegexOptions.IgnoreCase)]
    private static partial Regex PatientSegment();
}
