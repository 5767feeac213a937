using static TorchSharp.torch;

namespace XRay.Model.Training;

/// <summary>
/// Images decoded once, ready for training and evaluation: <see cref="Planes"/> is <c>[N, 1, S, S]</c> float32 luma in
/// [0, 1] after <see cref="ImagePreprocessor"/> (decode, grayscale, resize, centre crop), kept as one channel so
/// augmentation works on intensities; <see cref="Normalizer"/> replicates and normalises a batch afterwards, exactly
/// as the preprocessor would. Owns <see cref="Planes"/>.
/// </summary>
public sealed class ImageSet : IDisposable
{
    private ImageSet(Tensor planes, float[] labels, IReadOnlyList<string> classNames, IReadOnlyList<string> names, IReadOnlyList<string> patientIds)
    {
        Planes = planes;
        Labels = labels;
        ClassNames = classNames;
        Names = names;
        PatientIds = patientIds;
    }

    /// <summary>Wraps luma planes <c>[N, 1, S, S]</c> (float32 in [0, 1]; ownership passes to the set) and row-major <c>N x C</c> labels.</summary>
    public static ImageSet FromTensors(Tensor planes, float[] labels, IReadOnlyList<string> classNames, IReadOnlyList<string> names, IReadOnlyList<string> patientIds)
    {
        ArgumentNullException.ThrowIfNull(planes);
        ArgumentNullException.ThrowIfNull(labels);
        ArgumentNullException.ThrowIfNull(classNames);
        ArgumentNullException.ThrowIfNull(names);
        ArgumentNullException.ThrowIfNull(patientIds);
        var n = names.Count;
        if (planes.ndim != 4 || planes.shape[0] != n || planes.shape[1] != 1 || planes.dtype != ScalarType.Float32)
        {
            throw new ArgumentException($"Planes must be float32 [{n}, 1, S, S]; got {planes.dtype} [{string.Join(", ", planes.shape)}].", nameof(planes));
        }

        if (labels.Length != n * classNames.Count || patientIds.Count != n)
        {
            throw new ArgumentException($"{labels.Length} labels and {patientIds.Count} patient ids for {n} images of {classNames.Count} classes.");
        }

        return new ImageSet(planes, labels, classNames, names, patientIds);
    }

    /// <summary><c>[N, 1, S, S]</c>, float32 in [0, 1].</summary>
    public Tensor Planes { get; }

    /// <summary>Row-major <c>N x C</c>; NaN marks an ignored label.</summary>
    public float[] Labels { get; }

    public IReadOnlyList<string> ClassNames { get; }

    /// <summary>Image file names (or synthetic ids), for reports.</summary>
    public IReadOnlyList<string> Names { get; }

    public IReadOnlyList<string> PatientIds { get; }

    public int Count => Names.Count;

    public int NumClasses => ClassNames.Count;

    /// <summary>Labels of class <paramref name="c"/>, one per image.</summary>
    public float[] ClassLabels(int c) => Enumerable.Range(0, Count).Select(i => Labels[i * NumClasses + c]).ToArray();

    /// <summary>Decodes every image of <paramref name="dataset"/> with the one preprocessing implementation, in parallel.</summary>
    /// <exception cref="InvalidImageException">An image cannot be decoded (the message names the file).</exception>
    public static ImageSet Load(LabeledDataset dataset, PreprocessingSpec spec, Action<int>? onDecoded = null)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        var preprocessor = new ImagePreprocessor(spec);
        var plane = spec.CropSize * spec.CropSize;
        var planes = new float[(long)dataset.Images.Count * plane];
        var done = 0;
        Parallel.For(0, dataset.Images.Count, i =>
        {
            var path = dataset.Images[i].ImagePath;
            try
            {
                preprocessor.DecodeToLuma(File.ReadAllBytes(path), planes.AsSpan(i * plane, plane));
            }
            catch (InvalidImageException e)
            {
                throw new InvalidImageException($"{path}: {e.Message}");
            }

            onDecoded?.Invoke(Interlocked.Increment(ref done));
        });

        return new ImageSet(
            tensor(planes, [dataset.Images.Count, 1, spec.CropSize, spec.CropSize]),
            dataset.Images.SelectMany(i => i.Labels).ToArray(),
            dataset.ClassNames,
            dataset.Images.Select(i => Path.GetFileName(i.ImagePath)).ToArray(),
            dataset.Images.Select(i => i.PatientId).ToArray());
    }

    /// <summary>
    /// Images <c>first .. first+count-1</c> of <paramref name="generator"/>, rendered at the crop size as luma in
    /// [0, 1] (<c>x / 255</c>, as the preprocessor scales uint8 pixels before normalising).
    /// </summary>
    public static ImageSet Synthetic(SyntheticChestXray generator, int first, int count, PreprocessingSpec spec)
    {
        ArgumentNullException.ThrowIfNull(generator);
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        var size = spec.CropSize;
        var plane = size * size;
        var planes = new float[(long)count * plane];
        var labels = new float[count * SyntheticChestXray.ClassNames.Count];
        Parallel.For(0, count, i =>
        {
            var (pixels, imageLabels) = generator.Render(first + i, size);
            var luma = planes.AsSpan(i * plane, plane);
            for (var j = 0; j < plane; j++)
            {
                luma[j] = pixels[j] / 255f;
            }

            imageLabels.CopyTo(labels, i * imageLabels.Length);
        });

        var names = Enumerable.Range(first, count).Select(i => $"synthetic_{i:D6}").ToArray();
        return new ImageSet(tensor(planes, [count, 1, size, size]), labels, SyntheticChestXray.ClassNames, names, names);
    }

    /// <summary>The images at <paramref name="indices"/> as a new set (copies the planes).</summary>
    public ImageSet Subset(IReadOnlyList<int> indices)
    {
        using var index = tensor(indices.Select(i => (long)i).ToArray());
        var labels = indices.SelectMany(i => Labels.AsSpan(i * NumClasses, NumClasses).ToArray()).ToArray();
        return new ImageSet(
            Planes.index_select(0, index), labels, ClassNames,
            indices.Select(i => Names[i]).ToArray(), indices.Select(i => PatientIds[i]).ToArray());
    }

    /// <summary>
    /// Targets (ignored labels as 0) and mask (1 counted, 0 ignored), each <c>[B, C]</c>, for the images at
    /// <paramref name="indices"/>.
    /// </summary>
    public (Tensor Targets, Tensor Mask) LabelBatch(ReadOnlySpan<long> indices)
    {
        var targets = new float[indices.Length * NumClasses];
        var mask = new float[targets.Length];
        for (var b = 0; b < indices.Length; b++)
        {
            for (var c = 0; c < NumClasses; c++)
            {
                var label = Labels[indices[b] * NumClasses + c];
                var counted = !float.IsNaN(label);
                targets[b * NumClasses + c] = counted ? label : 0f;
                mask[b * NumClasses + c] = counted ? 1f : 0f;
            }
        }

        return (tensor(targets, [indices.Length, NumClasses]), tensor(mask, [indices.Length, NumClasses]));
    }

    public void Dispose() => Planes.Dispose();
}

/// <summary>Turns <c>[B, 1, S, S]</c> luma in [0, 1] into the network input: replicated to the spec's channels (3 or 1), <c>(x - mean) / std</c>.</summary>
public sealed class Normalizer : IDisposable
{
    private readonly Tensor _mean;
    private readonly Tensor _std;
    private readonly int _channels;

    public Normalizer(PreprocessingSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        _channels = spec.Channels;
        _mean = tensor(spec.Mean, [1, _channels, 1, 1]);
        _std = tensor(spec.Std, [1, _channels, 1, 1]);
    }

    public Tensor Apply(Tensor luma) => (luma.expand(-1, _channels, -1, -1) - _mean) / _std;

    public void Dispose()
    {
        _mean.Dispose();
        _std.Dispose();
    }
}
