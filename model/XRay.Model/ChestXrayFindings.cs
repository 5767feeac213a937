namespace XRay.Model;

/// <summary>Label sets the models are trained on.</summary>
public static class ChestXrayFindings
{
    /// <summary>
    /// The 14 findings of NIH ChestX-ray14 (Wang et al., 2017), in the dataset's conventional order, which is
    /// also CheXNet's output order. Names are spelled as in the dataset's <c>Data_Entry_2017.csv</c>.
    /// </summary>
    public static IReadOnlyList<string> Nih14 { get; } = Array.AsReadOnly(
    [
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
        "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
    ]);
}
