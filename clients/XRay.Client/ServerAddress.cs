using System.Globalization;

namespace XRay.Client;

/// <summary>
/// The server addresses users type: <c>http://host:port</c>, <c>https://host:port</c>, <c>dns:///host:port</c>, or plain
/// <c>host:port</c> (<c>localhost:5051</c>, <c>10.0.0.5:5051</c>, <c>[::1]:5051</c>), which means <c>http://host:port</c>.
/// </summary>
public static class ServerAddress
{
    /// <summary>The address as a URI gRPC can dial.</summary>
    /// <exception cref="FormatException">Not an address of a form above; the message says what is wrong and what is expected.</exception>
    public static Uri Parse(string address)
    {
        ArgumentNullException.ThrowIfNull(address);
        string text = address.Trim();
        if (text.Length == 0) throw Bad(address, "it is empty");

        if (text.StartsWith("dns:", StringComparison.OrdinalIgnoreCase))
        {
            // dns:///host:port (an empty authority: the system's resolver), as gRPC names it.
            if (!text.StartsWith("dns:///", StringComparison.OrdinalIgnoreCase) || text.Length == "dns:///".Length)
            {
                throw Bad(address, "a DNS name is written dns:///host:port");
            }
            (string host, int? port) = SplitHostPort(text["dns:///".Length..], address);
            if (port is null) throw Bad(address, "it has no port");
            return new Uri($"dns:///{host}:{port.Value.ToString(CultureInfo.InvariantCulture)}");
        }

        int schemeEnd = text.IndexOf("://", StringComparison.Ordinal);
        if (schemeEnd < 0)
        {
            (string host, int? port) = SplitHostPort(text, address);
            if (port is null) throw Bad(address, "it has no port");
            return new Uri($"http://{host}:{port.Value.ToString(CultureInfo.InvariantCulture)}");
        }

        string scheme = text[..schemeEnd].ToLowerInvariant();
        if (scheme is not ("http" or "https")) throw Bad(address, $"'{text[..schemeEnd]}://' is not a scheme the client speaks");
        if (!Uri.TryCreate(text, UriKind.Absolute, out Uri? uri) || uri.Host.Length == 0) throw Bad(address, "it is not a valid URL");
        if (uri.AbsolutePath is not ("/" or "")) throw Bad(address, $"gRPC servers take no path ('{uri.AbsolutePath}')");
        return uri;
    }

    /// <summary>"host:port", "[v6]:port" or "host"; the port, when present, must be 1..65535.</summary>
    private static (string Host, int? Port) SplitHostPort(string text, string address)
    {
        string host;
        string? port;
        if (text.StartsWith('['))
        {
            int close = text.IndexOf(']', StringComparison.Ordinal);
            if (close < 0) throw Bad(address, "an IPv6 address is written [::1]:port");
            host = text[..(close + 1)];
            string rest = text[(close + 1)..];
            port = rest.Length == 0 ? null : rest.StartsWith(':') ? rest[1..] : throw Bad(address, "expected :port after the IPv6 address");
        }
        else
        {
            int colon = text.LastIndexOf(':');
            if (colon >= 0 && text.IndexOf(':') != colon) throw Bad(address, "an IPv6 address is written [::1]:port");
            host = colon < 0 ? text : text[..colon];
            port = colon < 0 ? null : text[(colon + 1)..];
        }
        if (host.Length == 0 || host.Any(c => char.IsWhiteSpace(c) || c is '/' or '?' or '#' or '@'))
        {
            throw Bad(address, "it does not name a host");
        }
        if (port is null) return (host, null);
        if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int number) || number is < 1 or > 65535)
        {
            throw Bad(address, $"'{port}' is not a port (1-65535)");
        }
        return (host, number);
    }

    private static FormatException Bad(string address, string why) =>
        new($"'{address}' is not a server address: {why}; use host:port, http://host:port, https://host:port or dns:///host:port");
}
