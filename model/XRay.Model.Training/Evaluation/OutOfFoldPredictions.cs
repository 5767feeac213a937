using System.Globalization;
using System.Text;

namespace XRay.Model.Evaluation;

/// <summary>
/// Cross-validated predictions: for every image, the raw logits of the network that did not see it, its fold and its
/// labels. Written by <c>xray-train crossval</c> as <c>oof.csv</c> (columns <c>image,patient,fold</c>, then
/// <c>logit:CLASS</c> and <c>label:CLASS</c> per class; an ignored label is empty) and read by <c>calibrate</c>.
/// </summary>
public sealed record OutOfFoldPredictions(
    IReadOnlyList<string> ClassNames,
    IReadOnlyList<string> Images,
    IReadOnlyList<string> Patients,
    IReadOnlyList<int> Folds,
    float[] Logits,
    float[] Labels)
{
    public int Count => Images.Count;

    public int NumClasses => ClassNames.Count;

    /// <summary>Column <paramref name="c"/> of a row-major <c>N x C</c> array.</summary>
    public float[] Column(float[] rowMajor, int c) => Enumerable.Range(0, Count).Select(i => rowMajor[i * NumClasses + c]).ToArray();

    public void Write(string path)
    {
        var csv = new StringBuilder();
        csv.AppendJoin(',', ["image", "patient", "fold", .. ClassNames.Select(c => "logit:" + c), .. ClassNames.Select(c => "label:" + c)]).Append('\n');
        for (var i = 0; i < Count; i++)
        {
            csv.Append(Quote(Images[i])).Append(',').Append(Quote(Patients[i])).Append(',').Append(Folds[i].ToString(CultureInfo.InvariantCulture));
            for (var c = 0; c < NumClasses; c++)
            {
                csv.Append(',').Append(Logits[i * NumClasses + c].ToString("R", CultureInfo.InvariantCulture));
            }

            for (var c = 0; c < NumClasses; c++)
            {
                var label = Labels[i * NumClasses + c];
                csv.Append(',').Append(float.IsNaN(label) ? "" : label.ToString("R", CultureInfo.InvariantCulture));
            }

            csv.Append('\n');
        }

        File.WriteAllText(path, csv.ToString());
    }

    /// <exception cref="InvalidDataException">The file is not in this format; the message names the line.</exception>
    public static OutOfFoldPredictions Read(string path)
    {
        var lines = File.ReadAllLines(path).Where(l => l.Length > 0).ToArray();
        if (lines.Length < 2)
        {
            throw new InvalidDataException($"{path}: no predictions (a header and at least one row are needed).");
        }

        var header = lines[0].Split(',');
        var classes = header.Skip(3).Where(h => h.StartsWith("logit:", StringComparison.Ordinal)).Select(h => h["logit:".Length..]).ToArray();
        if (header.Length < 3 || header[0] != "image" || header[1] != "patient" || header[2] != "fold" || classes.Length == 0
            || !header.Skip(3).SequenceEqual([.. classes.Select(c => "logit:" + c), .. classes.Select(c => "label:" + c)]))
        {
            throw new InvalidDataException($"{path}:1: expected the header image,patient,fold,logit:CLASS...,label:CLASS... (as crossval writes it).");
        }

        var n = lines.Length - 1;
        var c = classes.Length;
        var images = new string[n];
        var patients = new string[n];
        var folds = new int[n];
        var logits = new float[n * c];
        var labels = new float[n * c];
        for (var i = 0; i < n; i++)
        {
            var fields = SplitCsv(lines[i + 1]);
            if (fields.Count != 3 + 2 * c)
            {
                throw new InvalidDataException($"{path}:{i + 2}: {fields.Count} fields; the header has {3 + 2 * c}.");
            }

            images[i] = fields[0];
            patients[i] = fields[1];
            folds[i] = int.TryParse(fields[2], CultureInfo.InvariantCulture, out var f) ? f
                : throw new InvalidDataException($"{path}:{i + 2}: fold '{fields[2]}' is not an integer.");
            for (var k = 0; k < c; k++)
            {
                logits[i * c + k] = float.TryParse(fields[3 + k], NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && float.IsFinite(v) ? v
                    : throw new InvalidDataException($"{path}:{i + 2}: logit '{fields[3 + k]}' for {classes[k]} is not a finite number.");
                var label = fields[3 + c + k];
                labels[i * c + k] = label.Length == 0 ? float.NaN
                    : float.TryParse(label, NumberStyles.Float, CultureInfo.InvariantCulture, out var y) && y is >= 0 and <= 1 ? y
                    : throw new InvalidDataException($"{path}:{i + 2}: label '{label}' for {classes[k]} is not in [0, 1] or empty.");
            }
        }

        return new OutOfFoldPredictions(classes, images, patients, folds, logits, labels);
    }

    private static string Quote(string value) =>
        value.IndexOfAny([',', '"', '\n']) < 0 ? value : "\"" + value.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    private static List<string> SplitCsv(string line)
    {
        var fields = new List<string>();
        var field = new StringBuilder();
        var quoted = false;
        for (var i = 0; i < line.Length; i++)
        {
            var ch = line[i];
            if (quoted)
            {
                if (ch == '"' && i + 1 < line.Length && line[i + 1] == '"') { field.Append('"'); i++; }
                else if (ch == '"') quoted = false;
                else field.Append(ch);
            }
            else if (ch == '"') quoted = true;
            else if (ch == ',') { fields.Add(field.ToString()); field.Clear(); }
            else field.Append(ch);
        }

        fields.Add(field.ToString());
        return fields;
    }
}
