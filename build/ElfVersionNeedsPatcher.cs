// Marks the GLIBCXX version needs of a shared library as weak (VER_FLG_WEAK) when this machine's
// libstdc++ does not define them, so that the dynamic loader accepts the library on an older libstdc++.
//
// Why: libLibTorchSharp.so (TorchSharp 0.107.0) was linked against GCC 13's libstdc++ and records a need
// for GLIBCXX_3.4.32, but the only symbol bound to that version (_ZSt21ios_base_library_initv) is never
// relocated. Debian 12 ships GLIBCXX_3.4.30, so without this the library fails to load. The file is
// rewritten in the build output only (a new file, then a rename), never in the NuGet cache.
#nullable enable
using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public sealed class ElfVersionNeedsPatcher : Task
{
    const uint ShtGnuVerdef = 0x6ffffffd;
    const uint ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlagWeak = 0x2;

    [Required] public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();

    /// <summary>Candidate paths of the system libstdc++; the first that exists is the one consulted.</summary>
    [Required] public string[] SystemLibraryCandidates { get; set; } = Array.Empty<string>();

    public override bool Execute()
    {
        string? system = SystemLibraryCandidates.FirstOrDefault(File.Exists);
        if (system is null)
        {
            Log.LogMessage(MessageImportance.Low, "No system libstdc++ found; nothing to patch.");
            return true;
        }
        HashSet<string> provided = DefinedVersions(File.ReadAllBytes(system));
        foreach (ITaskItem item in Files)
        {
            string path = item.ItemSpec;
            byte[] image = File.ReadAllBytes(path);
            List<string> weakened = WeakenMissing(image, "libstdc++.so.6", provided);
            if (weakened.Count == 0) continue;
            string temp = path + ".patching";
            File.WriteAllBytes(temp, image);
            File.Replace(temp, path, null); // an atomic rename over the copied file
            Log.LogMessage(MessageImportance.High,
                $"{Path.GetFileName(path)}: marked {string.Join(", ", weakened)} weak ({system} lacks them).");
        }
        return !Log.HasLoggedErrors;
    }

    static List<string> WeakenMissing(byte[] image, string library, HashSet<string> provided)
    {
        var weakened = new List<string>();
        foreach (Section section in Sections(image).Where(s => s.Type == ShtGnuVerneed))
        {
            Section strings = Sections(image)[(int)section.Link];
            long entry = section.Offset;
            for (uint i = 0; i < section.Info; i++)
            {
                ushort count = U16(image, entry + 2);
                string file = CString(image, strings.Offset + U32(image, entry + 4));
                long aux = entry + U32(image, entry + 8);
                for (int j = 0; j < count; j++)
                {
                    string name = CString(image, strings.Offset + U32(image, aux + 8));
                    ushort flags = U16(image, aux + 4);
                    if (file == library && name.StartsWith("GLIBCXX_", StringComparison.Ordinal)
                        && !provided.Contains(name) && (flags & VerFlagWeak) == 0)
                    {
                        ushort weak = (ushort)(flags | VerFlagWeak);
                        image[aux + 4] = (byte)weak;
                        image[aux + 5] = (byte)(weak >> 8);
                        weakened.Add(name);
                    }
                    aux += U32(image, aux + 12);
                }
                entry += U32(image, entry + 12);
            }
        }
        return weakened;
    }

    static HashSet<string> DefinedVersions(byte[] image)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        List<Section> sections = Sections(image);
        foreach (Section section in sections.Where(s => s.Type == ShtGnuVerdef))
        {
            Section strings = sections[(int)section.Link];
            long entry = section.Offset;
            for (uint i = 0; i < section.Info; i++)
            {
                long aux = entry + U32(image, entry + 12);
                names.Add(CString(image, strings.Offset + U32(image, aux)));
                entry += U32(image, entry + 16);
            }
        }
        return names;
    }

    readonly struct Section
    {
        public Section(uint type, long offset, uint link, uint info) { Type = type; Offset = offset; Link = link; Info = info; }
        public uint Type { get; }
        public long Offset { get; }
        public uint Link { get; }
        public uint Info { get; }
    }

    static List<Section> Sections(byte[] image)
    {
        if (image.Length < 64 || image[0] != 0x7f || image[1] != (byte)'E' || image[4] != 2 || image[5] != 1)
            throw new InvalidDataException("not a 64-bit little-endian ELF file");
        long table = (long)BitConverter.ToUInt64(image, 0x28);
        ushort size = U16(image, 0x3A), count = U16(image, 0x3C);
        var sections = new List<Section>(count);
        for (int i = 0; i < count; i++)
        {
            long header = table + (long)i * size;
            sections.Add(new Section(U32(image, header + 4), (long)BitConverter.ToUInt64(image, (int)header + 24),
                U32(image, header + 40), U32(image, header + 44)));
        }
        return sections;
    }

    static ushort U16(byte[] image, long offset) => BitConverter.ToUInt16(image, (int)offset);
    static uint U32(byte[] image, long offset) => BitConverter.ToUInt32(image, (int)offset);

    static string CString(byte[] image, long offset)
    {
        int end = Array.IndexOf(image, (byte)0, (int)offset);
        return Encoding.ASCII.GetString(image, (int)offset, end - (int)offset);
    }
}
