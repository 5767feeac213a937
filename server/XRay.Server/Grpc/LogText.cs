using System.Text;

namespace XRay.Server.Grpc;

/// <summary>Makes caller-chosen strings safe to log: bounded in length, control and non-ASCII characters escaped.</summary>
public static class LogText
{
    /// <summary>Characters of a caller's string kept in a log line (default request ids are at most 256 anyway).</summary>
    public const int MaxLength = 128;

    /// <summary>
    /// At most <see cref="MaxLength"/> characters, each outside printable ASCII written as <c>\uXXXX</c> (so a newline
    /// cannot forge a log line and a terminal escape cannot run), followed by <c>…(+N)</c> when cut.
    /// </summary>
    public static string Quote(string? value)
    {
        if (string.IsNullOrEmpty(value))
        {
            return "";
        }
        int kept = Math.Min(value.Length, MaxLength);
        bool plain = kept == value.Length;
        for (int i = 0; plain && i < kept; i++)
        {
            plain = IsPlain(value[i]);
        }
        if (plain)
        {
            return value;
        }

        var text = new StringBuilder(kept + 16);
        for (int i = 0; i < kept; i++)
        {
            char c = value[i];
            if (IsPlain(c))
            {
                text.Append(c);
            }
            else
            {
                text.Append("\\u").Append(((int)c).ToString("x4", System.Globalization.CultureInfo.InvariantCulture));
            }
        }
        if (kept < value.Length)
        {
            text.Append("…(+").Append(value.Length - kept).Append(')');
        }
        return text.ToString();
    }

    private static bool IsPlain(char c) => c is >= ' ' and <= '~' and not '\\';
}
