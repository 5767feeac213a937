namespace XRay.Model.Tests;

/// <summary>
/// Locates the project's shared data (<c>shared/data</c> beside the repository, never copied into it) by walking up
/// from the test binaries.
/// </summary>
internal static class SharedData
{
    public const string NihSampleRelativePath = "nih-cxr14-sample/fullres/00000100_000.png";

    public static string? NihSample => Find(NihSampleRelativePath);

    public static string? Find(string relativePath)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "data", relativePath);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }
}

/// <summary>A fact that reports itself skipped, saying why, when the NIH sample image is not on this machine.</summary>
public sealed class NihSampleFactAttribute : FactAttribute
{
    public NihSampleFactAttribute()
    {
        if (SharedData.NihSample is null)
        {
            Skip = $"shared/data/{SharedData.NihSampleRelativePath} was not found in any folder above {AppContext.BaseDirectory}.";
        }
    }
}
