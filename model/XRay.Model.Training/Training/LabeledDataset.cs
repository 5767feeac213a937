namespace XRay.Model.Training;

/// <summary>
/// One labelled image. <see cref="Labels"/> holds one value per class in [0, 1] (hard 0/1 or soft), or NaN where the
/// label is ignored (masked out of the loss and the metrics, e.g. an uncertain label under the ignore policy).
/// </summary>
public sealed record LabeledImage(string ImagePath, string PatientId, float[] Labels);

/// <summary>Images with multi-hot labels over <see cref="ClassNames"/>, as read from a label file.</summary>
public sealed record LabeledDataset
{
    public LabeledDataset(IReadOnlyList<string> classNames, IReadOnlyList<LabeledImage> images, string source)
    {
        ArgumentNullException.ThrowIfNull(classNames);
        ArgumentNullException.ThrowIfNull(images);
        if (classNames.Count == 0)
        {
            throw new ArgumentException("A dataset needs at least one class.", nameof(classNames));
        }

        foreach (var image in images)
        {
            if (image.Labels.Length != classNames.Count)
            {
                throw new ArgumentException(
                    $"{image.ImagePath} has {image.Labels.Length} labels for {classNames.Count} classes.", nameof(images));
            }
        }

        ClassNames = classNames;
        Images = images;
        Source = source;
    }

    public IReadOnlyList<string> ClassNames { get; }

    public IReadOnlyList<LabeledImage> Images { get; }

    /// <summary>Where the labels came from, for the manifest (e.g. "NIH ChestX-ray14 label file Data_Entry_2017.csv").</summary>
    public string Source { get; }

    /// <summary>The images at <paramref name="indices"/>, in that order.</summary>
    public LabeledDataset Subset(IEnumerable<int> indices) =>
        new(ClassNames, indices.Select(i => Images[i]).ToArray(), Source);

    /// <summary>Per class: images whose label counts (not NaN), and the sum of those labels (positives; soft labels add fractions).</summary>
    public (int Counted, double Positives)[] ClassCounts()
    {
        var result = new (int, double)[ClassNames.Count];
        foreach (var image in Images)
        {
            for (var c = 0; c < result.Length; c++)
            {
                if (!float.IsNaN(image.Labels[c]))
                {
                    result[c] = (result[c].Item1 + 1, result[c].Item2 + image.Labels[c]);
                }
            }
        }

        return result;
    }
}
