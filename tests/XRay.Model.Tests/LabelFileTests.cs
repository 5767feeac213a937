using XRay.Model.Training;

namespace XRay.Model.Tests;

public class NihLabelFileTests
{
    private const string Header =
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";

    [Fact]
    public void Read_SplitsFindingsOnPipe_NoFindingIsAllZero_AndFindsColumnsDespiteBracketedCommas()
    {
        using var dir = new TempDirectory();
        var csv = WriteCsv(dir.Path,
            "a.png,Cardiomegaly,0,75,61,F,PA,2482,2991,0.143,0.143",
            "b.png,Atelectasis|Effusion|Infiltration,0,100,60,M,PA,2500,2048,0.171,0.171",
            "c.png,No Finding,1,100,66,F,PA,2462,2991,0.143,0.143,"); // the full release's trailing comma

        var data = NihLabelFile.Read(csv);

        Assert.Equal(ChestXrayFindings.Nih14, data.ClassNames);
        Assert.Equal(3, data.Images.Count);
        Assert.Equal("75", data.Images[0].PatientId);
        Assert.Equal(Hot("Cardiomegaly"), data.Images[0].Labels);
        Assert.Equal(Hot("Atelectasis", "Effusion", "Infiltration"), data.Images[1].Labels);
        Assert.Equal(new float[14], data.Images[2].Labels);
        Assert.Equal(Path.Combine(dir.Path, "images", "b.png"), data.Images[1].ImagePath);
    }

    [Fact]
    public void Read_UnknownFinding_IsRefusedWithLineNumber()
    {
        using var dir = new TempDirectory();
        var csv = WriteCsv(dir.Path, "a.png,Cardiomegaly|Fracture,0,75,61,F,PA,1,1,0.1,0.1");

        var e = Assert.Throws<InvalidDataException>(() => NihLabelFile.Read(csv));
        Assert.Contains(":2:", e.Message);
        Assert.Contains("'Fracture'", e.Message);
    }

    [Fact]
    public void Read_MissingImage_IsRefusedUnlessSkipped()
    {
        using var dir = new TempDirectory();
        var csv = WriteCsv(dir.Path, "a.png,Hernia,0,75,61,F,PA,1,1,0.1,0.1", "gone.png,Hernia,0,76,61,F,PA,1,1,0.1,0.1");
        File.Delete(Path.Combine(dir.Path, "images", "gone.png"));

        Assert.Contains("gone.png", Assert.Throws<InvalidDataException>(() => NihLabelFile.Read(csv)).Message);
        Assert.Single(NihLabelFile.Read(csv, skipMissingImages: true).Images);
    }

    [NihSampleFact]
    public void Read_RealSample_MatchesItsReadme()
    {
        var csv = SharedData.Find("nih-cxr14-sample/Data_Entry_2017.csv")!;
        Assert.Equal(11, File.ReadLines(csv).First().Split(',').Length); // the header quirk

        var data = NihLabelFile.Read(csv);

        Assert.Equal(421, data.Images.Count);
        Assert.Equal(421, data.Images.Select(i => i.PatientId).Distinct().Count());
        var positives = data.ClassNames.Select((name, c) => (name, count: data.Images.Count(i => i.Labels[c] == 1))).ToDictionary();
        Assert.Equal(84, positives["Infiltration"]);
        Assert.Equal(59, positives["Atelectasis"]);
        Assert.Equal(39, positives["Cardiomegaly"]);
        Assert.Equal(14, positives["Hernia"]);
        Assert.Equal(12, positives["Edema"]);
        Assert.Equal(69, data.Images.Count(i => i.Labels.All(l => l == 0))); // No Finding
        Assert.All(data.Images, i => Assert.True(File.Exists(i.ImagePath)));
    }

    private static float[] Hot(params string[] findings) =>
        ChestXrayFindings.Nih14.Select(f => findings.Contains(f) ? 1f : 0f).ToArray();

    private static string WriteCsv(string dir, params string[] rows)
    {
        Directory.CreateDirectory(Path.Combine(dir, "images"));
        foreach (var row in rows)
        {
            File.WriteAllBytes(Path.Combine(dir, "images", row.Split(',')[0]), []);
        }

        var path = Path.Combine(dir, "Data_Entry_2017.csv");
        File.WriteAllLines(path, [Header, .. rows]);
        return path;
    }
}

public class LabelCsvFileTests
{
    [Fact]
    public void Read_HardAndSoftLabels_QuotedPaths_AndPatientColumn()
    {
        using var dir = new TempDirectory();
        var csv = Write(dir.Path,
            "path,patient,Edema,Effusion",
            "x/a.png,p1,1,0",
            "\"x/b, with comma.png\",p2,0.25,0.9");

        var data = LabelCsvFile.Read(csv);

        Assert.Equal(["Edema", "Effusion"], data.ClassNames);
        Assert.Equal([1f, 0f], data.Images[0].Labels);
        Assert.Equal([0.25f, 0.9f], data.Images[1].Labels);
        Assert.Equal(Path.Combine(dir.Path, "x", "b, with comma.png"), data.Images[1].ImagePath);
        Assert.Equal(["p1", "p2"], data.Images.Select(i => i.PatientId));
    }

    [Theory]
    [InlineData(UncertainLabelPolicy.Ignore, float.NaN)]
    [InlineData(UncertainLabelPolicy.Ones, 1f)]
    [InlineData(UncertainLabelPolicy.Zeros, 0f)]
    public void Read_UncertainLabel_FollowsPolicy(UncertainLabelPolicy policy, float expected)
    {
        using var dir = new TempDirectory();
        var csv = Write(dir.Path, "Path,Sex,Edema,Cardiomegaly", "train/patient00042/study1/view1_frontal.jpg,F,-1.0,1.0");

        var data = LabelCsvFile.Read(csv, classNames: ["Edema", "Cardiomegaly"], uncertain: policy);

        Assert.Equal(expected, data.Images[0].Labels[0]);
        Assert.Equal(1f, data.Images[0].Labels[1]);
        Assert.Equal("patient00042", data.Images[0].PatientId); // CheXpert layout without a patient column
    }

    [Fact]
    public void Read_BlankCell_IsIgnoredOrZeroByPolicy()
    {
        using var dir = new TempDirectory();
        var csv = Write(dir.Path, "image,A,B", "a.png,,1");

        Assert.True(float.IsNaN(LabelCsvFile.Read(csv).Images[0].Labels[0]));
        Assert.Equal(0f, LabelCsvFile.Read(csv, blank: BlankLabelPolicy.Zero).Images[0].Labels[0]);
    }

    [Theory]
    [InlineData("1.5")]
    [InlineData("-0.5")]
    [InlineData("yes")]
    public void Read_LabelOutsideRange_IsRefusedNamingRowAndColumn(string cell)
    {
        using var dir = new TempDirectory();
        var csv = Write(dir.Path, "path,A,B", $"a.png,0,{cell}");

        var e = Assert.Throws<InvalidDataException>(() => LabelCsvFile.Read(csv));
        Assert.Contains("row 2", e.Message);
        Assert.Contains("'B'", e.Message);
    }

    [Fact]
    public void Read_WithoutPathColumn_SaysWhichNamesAreAccepted()
    {
        using var dir = new TempDirectory();
        var csv = Write(dir.Path, "file,A", "a.png,1");

        Assert.Contains("image path column", Assert.Throws<InvalidDataException>(() => LabelCsvFile.Read(csv)).Message);
    }

    private static string Write(string dir, params string[] lines)
    {
        var path = Path.Combine(dir, "labels.csv");
        File.WriteAllText(path, string.Join("\r\n", lines) + "\r\n");
        return path;
    }
}

public class PatientSplitTests
{
    [Fact]
    public void Assign_KeepsEachPatientOnOneSide_IsDeterministic_AndHonoursFractions()
    {
        var patients = Enumerable.Range(0, 1000).Select(i => $"p{i % 200}").ToArray(); // 5 images per patient
        var split = new PatientSplit { Seed = 3, ValidationFraction = 0.2, TestFraction = 0.1 };

        var parts = split.Assign(patients);

        Assert.Equal(parts, split.Assign(patients));
        Assert.All(patients.Zip(parts).GroupBy(p => p.First), g => Assert.Single(g.Select(p => p.Second).Distinct()));
        Assert.Equal(100, parts.Count(p => p == SplitPart.Test));
        Assert.Equal(200, parts.Count(p => p == SplitPart.Validation));
        Assert.NotEqual(parts, (split with { Seed = 4 }).Assign(patients));
    }

    [Fact]
    public void Assign_DoesNotDependOnImageOrder()
    {
        var patients = Enumerable.Range(0, 60).Select(i => $"p{i}").ToArray();
        var split = new PatientSplit();
        var forward = patients.Zip(split.Assign(patients)).ToDictionary();
        var reversed = patients.Reverse().ToArray();
        var backward = reversed.Zip(split.Assign(reversed)).ToDictionary();

        Assert.Equal(forward.OrderBy(p => p.Key), backward.OrderBy(p => p.Key));
    }

    [Fact]
    public void Folds_KeepEachPatientInOneFold_AndBalanceFoldSizes()
    {
        var patients = Enumerable.Range(0, 230).Select(i => $"p{i % 46}").ToArray();

        var folds = new PatientSplit { Seed = 2 }.Folds(patients, 5);

        Assert.All(patients.Zip(folds).GroupBy(p => p.First), g => Assert.Single(g.Select(p => p.Second).Distinct()));
        var perFold = folds.Zip(patients).GroupBy(p => p.First).Select(g => g.Select(p => p.Second).Distinct().Count()).ToArray();
        Assert.Equal(5, perFold.Length);
        Assert.InRange(perFold.Max() - perFold.Min(), 0, 1);
        Assert.Equal(folds, new PatientSplit { Seed = 2 }.Folds(patients, 5));
    }

    [Fact]
    public void Assign_RefusesFractionsThatLeaveNoTrainingData() =>
        Assert.Throws<ArgumentException>(() => new PatientSplit { ValidationFraction = 0.5, TestFraction = 0.5 }.Assign(["a"]));
}
