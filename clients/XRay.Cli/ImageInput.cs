namespace XRay.Cli;

/// <summary>
/// One image file to classify, named by the path the user gave (or that path joined with the file's place under a
/// given folder), or a path that yields none with why (<see cref="Error"/>).
/// </summary>
internal sealed record ImageInput(string Path, string? Error)
{
    private static readonly string[] Extensions = [".png", ".jpg", ".jpeg"];

    /// <summary>Files as given; folders searched recursively for .png, .jpg and .jpeg files (any case), in ordinal order.</summary>
    public static IReadOnlyList<ImageInput> Expand(IEnumerable<string> paths)
    {
        var inputs = new List<ImageInput>();
        foreach (string path in paths)
        {
            if (File.Exists(path))
            {
                inputs.Add(new ImageInput(path, null));
            }
            else if (Directory.Exists(path))
            {
                var options = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, AttributesToSkip = 0 };
                string[] found = Directory.EnumerateFiles(path, "*", options)
                    .Where(file => Extensions.Contains(System.IO.Path.GetExtension(file), StringComparer.OrdinalIgnoreCase))
                    .Order(StringComparer.Ordinal)
                    .ToArray();
                if (found.Length == 0) inputs.Add(new ImageInput(path, "no PNG or JPEG files in this folder"));
                inputs.AddRange(found.Select(file => new ImageInput(file, null)));
            }
            else
            {
                inputs.Add(new ImageInput(path, "no such file or folder"));
            }
        }
        return inputs;
    }

    /// <summary>The PNG signature or a JPEG start-of-image marker; anything else is not worth sending.</summary>
    public static bool LooksLikePngOrJpeg(ReadOnlySpan<byte> bytes) =>
        bytes.StartsWith((ReadOnlySpan<byte>)[0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A])
        || bytes.StartsWith((ReadOnlySpan<byte>)[0xFF, 0xD8, 0xFF]);
}
