using System.CommandLine;

using XRay.Client;

namespace XRay.Cli;

/// <summary>
/// The command-line options every tool (xray, xray-loadtest) shares for reaching a secured server: <c>--ca</c>, <c>--cert</c>, <c>--key</c>,
/// <c>--token</c>, <c>--api-key</c> (or <c>XRAY_CA</c>, <c>XRAY_CERT</c>, <c>XRAY_KEY</c>, <c>XRAY_TOKEN</c>, <c>XRAY_API_KEY</c>).
/// </summary>
public sealed class CredentialOptions
{
    public Option<string?> Ca { get; } = Create("--ca", "XRAY_CA", "PEM file of the CA that signs the server's certificate (https:// servers).");
    public Option<string?> Certificate { get; } = Create("--cert", "XRAY_CERT", "PEM file of this client's certificate, for servers that require mutual TLS.");
    public Option<string?> Key { get; } = Create("--key", "XRAY_KEY", "PEM file of the client certificate's private key (default: the --cert file).");
    public Option<string?> Token { get; } = Create("--token", "XRAY_TOKEN", "Bearer token (JWT) sent with every call.");
    public Option<string?> ApiKey { get; } = Create("--api-key", "XRAY_API_KEY", "API key sent with every call (x-api-key).");

    public IEnumerable<Option> All => [Ca, Certificate, Key, Token, ApiKey];

    /// <summary>Copies the given options into <paramref name="options"/>; a named file that does not exist is a <see cref="FileNotFoundException"/>.</summary>
    public XRayClientOptions ApplyTo(ParseResult result, XRayClientOptions options)
    {
        options.CaCertificatePath = ExistingFile(result.GetValue(Ca), "--ca");
        options.ClientCertificatePath = ExistingFile(result.GetValue(Certificate), "--cert");
        options.ClientKeyPath = ExistingFile(result.GetValue(Key), "--key");
        options.BearerToken = result.GetValue(Token);
        options.ApiKey = result.GetValue(ApiKey);
        return options;
    }

    private static string? ExistingFile(string? path, string option) =>
        string.IsNullOrEmpty(path) || File.Exists(path) ? path : throw new FileNotFoundException($"{option}: no such file: {path}", path);

    private static Option<string?> Create(string name, string variable, string description) => new(name)
    {
        Description = $"{description} Default: ${variable}.",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable(variable) is { Length: > 0 } value ? value : null,
        Recursive = true,
    };
}
