namespace XRay.Model.Training;

/// <summary>Which part of a split an image belongs to.</summary>
public enum SplitPart
{
    Train,
    Validation,
    Test,
}

/// <summary>
/// Splits images by patient, so that no patient's images land on both sides (NIH ChestX-ray14 has many follow-up
/// images per patient; an image-level split leaks). Patients are ordered by ID, shuffled with the seed, and the
/// first <c>round(testFraction * patients)</c> go to test, the next <c>round(validationFraction * patients)</c> to
/// validation, the rest to training: the same seed and patient set always give the same split.
/// </summary>
public sealed record PatientSplit
{
    public int Seed { get; init; } = 1;

    /// <summary>Fraction of patients in validation (per-epoch metrics, threshold calibration). Default 0.15.</summary>
    public double ValidationFraction { get; init; } = 0.15;

    /// <summary>Fraction of patients held out as test, never seen in training or calibration. Default 0.15.</summary>
    public double TestFraction { get; init; } = 0.15;

    /// <summary>The part of each image, in the dataset's order.</summary>
    /// <exception cref="ArgumentException">Fractions outside [0, 1) or adding up to 1 or more.</exception>
    public SplitPart[] Assign(IReadOnlyList<string> patientIds)
    {
        ArgumentNullException.ThrowIfNull(patientIds);
        if (ValidationFraction is < 0 or >= 1 || TestFraction is < 0 or >= 1 || ValidationFraction + TestFraction >= 1)
        {
            throw new ArgumentException(
                $"Split fractions must be in [0, 1) and leave some training data; got validation {ValidationFraction}, test {TestFraction}.");
        }

        var patients = patientIds.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        new Random(Seed).Shuffle(patients);
        var test = (int)Math.Round(TestFraction * patients.Length);
        var validation = (int)Math.Round(ValidationFraction * patients.Length);
        var part = new Dictionary<string, SplitPart>(StringComparer.Ordinal);
        for (var i = 0; i < patients.Length; i++)
        {
            part[patients[i]] = i < test ? SplitPart.Test : i < test + validation ? SplitPart.Validation : SplitPart.Train;
        }

        return patientIds.Select(p => part[p]).ToArray();
    }

    /// <summary>
    /// For k-fold cross-validation by patient: the fold (0 .. <paramref name="folds"/>-1) of each image. Patients are
    /// ordered by ID, shuffled with <see cref="Seed"/> and dealt round-robin, so fold sizes differ by at most one patient.
    /// </summary>
    public int[] Folds(IReadOnlyList<string> patientIds, int folds)
    {
        ArgumentNullException.ThrowIfNull(patientIds);
        ArgumentOutOfRangeException.ThrowIfLessThan(folds, 2);
        var patients = patientIds.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        if (patients.Length < folds)
        {
            throw new ArgumentException($"{folds} folds need at least {folds} patients; the data has {patients.Length}.");
        }

        new Random(Seed).Shuffle(patients);
        var fold = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < patients.Length; i++)
        {
            fold[patients[i]] = i % folds;
        }

        return patientIds.Select(p => fold[p]).ToArray();
    }

    /// <summary>The dataset's images in <paramref name="which"/>.</summary>
    public LabeledDataset Select(LabeledDataset dataset, SplitPart which)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        var parts = Assign(dataset.Images.Select(i => i.PatientId).ToArray());
        return dataset.Subset(Enumerable.Range(0, parts.Length).Where(i => parts[i] == which));
    }
}
