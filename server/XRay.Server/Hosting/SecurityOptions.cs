using System.ComponentModel.DataAnnotations;

namespace XRay.Server.Hosting;

/// <summary>
/// Who may call the server. Configuration section <c>Security</c>. TLS itself is Kestrel's endpoint configuration
/// (<c>Kestrel:Endpoints:Grpc:Url=https://…</c> with <c>Certificate:Path</c>/<c>KeyPath</c>); this adds a certificate
/// given as PEM text, mutual TLS against a client CA, and caller authentication by API key or JWT bearer token.
/// </summary>
public sealed class SecurityOptions : IValidatableObject
{
    public const string SectionName = "Security";

    /// <summary>
    /// Whether Classifier calls need an authenticated caller (default false). Health and <c>/healthz</c>, <c>/readyz</c>
    /// stay open for probes; <c>/metrics</c> follows <see cref="ProtectMetrics"/>.
    /// </summary>
    public bool RequireAuthentication { get; set; }

    /// <summary>Accepted API keys, sent as <c>x-api-key: KEY</c> or <c>authorization: ApiKey KEY</c>. Default none.</summary>
    public List<ApiKey> ApiKeys { get; set; } = [];

    /// <summary>
    /// Client certificates (mutual TLS) that identify a caller: each entry matches a certificate by <c>Thumbprint</c>
    /// (SHA-1, hex) or <c>Subject</c> (the distinguished name, e.g. <c>CN=ward-3, O=Hospital</c>) and names the caller
    /// and its roles. A matched certificate authenticates the call like an API key. Default none.
    /// </summary>
    public List<ClientCertificate> ClientCertificates { get; set; } = [];

    /// <summary>
    /// The role <c>xray.v1.ModelAdmin</c> (model swaps, on the Admin endpoint) needs when <see cref="RequireAuthentication"/>
    /// is on. Default <c>admin</c>.
    /// </summary>
    public string AdminRole { get; set; } = "admin";

    public JwtSettings Jwt { get; set; } = new();

    /// <summary>
    /// The role a caller needs per Classifier method (<c>Classify</c>, <c>ClassifyStream</c>, <c>GetModelInfo</c>) or Open
    /// Inference Protocol method (<c>ModelInfer</c>, <c>ModelStreamInfer</c>, <c>ModelMetadata</c>, ...), e.g.
    /// <c>Classify: classify</c>. A method not listed needs only an authenticated caller. Default none.
    /// </summary>
    public Dictionary<string, string> MethodRoles { get; set; } = new(StringComparer.Ordinal);

    /// <summary>
    /// gRPC server reflection: <c>auto</c> (default: served when authentication is off, not when it is on), <c>on</c>
    /// (served; with authentication it needs an authenticated caller) or <c>off</c>.
    /// </summary>
    [RegularExpression("^(auto|on|off)$")]
    public string Reflection { get; set; } = "auto";

    /// <summary>
    /// Whether <c>/metrics</c> needs an authenticated caller (an API key or token with the <see cref="MetricsRole"/>
    /// role when set). Default false: bind the Metrics endpoint to a private interface instead.
    /// </summary>
    public bool ProtectMetrics { get; set; }

    /// <summary>The role <c>/metrics</c> needs when protected; empty (default): any authenticated caller.</summary>
    public string MetricsRole { get; set; } = "";

    public TlsSettings Tls { get; set; } = new();

    public bool ReflectionEnabled => Reflection == "on" || (Reflection == "auto" && !RequireAuthentication);

    public bool AuthenticationConfigured => ApiKeys.Count > 0 || Jwt.Configured || ClientCertificates.Count > 0;

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if ((RequireAuthentication || ProtectMetrics) && !AuthenticationConfigured)
        {
            yield return new ValidationResult("Security: authentication is required but no ApiKeys, no Jwt and no ClientCertificates are configured.");
        }
        foreach (ClientCertificate certificate in ClientCertificates)
        {
            if (string.IsNullOrEmpty(certificate.Name) || string.IsNullOrEmpty(certificate.Thumbprint) == string.IsNullOrEmpty(certificate.Subject))
            {
                yield return new ValidationResult("Security:ClientCertificates: every entry needs a Name and either a Thumbprint or a Subject.");
            }
        }
        if (ClientCertificates.Count > 0 && !Tls.MutualTls)
        {
            yield return new ValidationResult("Security:ClientCertificates needs mutual TLS (Security:Tls:ClientCaPath or ClientCaPem).");
        }
        foreach (ApiKey key in ApiKeys)
        {
            if (string.IsNullOrEmpty(key.Name) || key.Key.Length < 16)
            {
                yield return new ValidationResult("Security:ApiKeys: every key needs a Name and a Key of at least 16 characters.");
            }
        }
        if (ApiKeys.Select(key => key.Key).Distinct(StringComparer.Ordinal).Count() != ApiKeys.Count)
        {
            yield return new ValidationResult("Security:ApiKeys: two entries have the same Key.");
        }
        if (Jwt.Configured && string.IsNullOrEmpty(Jwt.Audience))
        {
            yield return new ValidationResult("Security:Jwt:Audience is required when JWT bearer tokens are accepted.");
        }
        if (Jwt.Configured && string.IsNullOrEmpty(Jwt.Authority) && string.IsNullOrEmpty(Jwt.Issuer))
        {
            yield return new ValidationResult("Security:Jwt:Issuer is required with a signing key (or set Security:Jwt:Authority).");
        }
        foreach (string method in MethodRoles.Keys.Except(SecurityMethods.Classifier).Except(SecurityMethods.Inference))
        {
            yield return new ValidationResult(
                $"Security:MethodRoles: '{method}' is not a Classifier method ({string.Join(", ", SecurityMethods.Classifier)}) " +
                $"nor an Open Inference Protocol method ({string.Join(", ", SecurityMethods.Inference.Except(SecurityMethods.Anonymous))}).");
        }
        if (string.IsNullOrEmpty(Tls.CertificatePem) != string.IsNullOrEmpty(Tls.KeyPem))
        {
            yield return new ValidationResult("Security:Tls: CertificatePem and KeyPem go together.");
        }
    }

    public sealed class ApiKey
    {
        /// <summary>Who holds the key: the caller's name in logs and claims.</summary>
        public string Name { get; set; } = "";

        private string _key = "";
        private byte[]? _keyHash;

        /// <summary>The secret, at least 16 characters. Pass it through an environment variable or a secret store, not a checked-in file.</summary>
        public string Key
        {
            get => _key;
            set
            {
                _key = value;
                _keyHash = null;
            }
        }

        /// <summary>SHA-256 of <see cref="Key"/>, computed once: what a presented key's hash is compared with.</summary>
        internal byte[] KeyHash => _keyHash ??= System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(_key));

        /// <summary>Roles the key grants (matched against <see cref="MethodRoles"/>).</summary>
        public List<string> Roles { get; set; } = [];
    }

    public sealed class ClientCertificate
    {
        /// <summary>Who holds the certificate: the caller's name (and its fair-share key).</summary>
        public string Name { get; set; } = "";

        /// <summary>SHA-1 thumbprint, hex (case and spaces ignored); or set <see cref="Subject"/>.</summary>
        public string Thumbprint { get; set; } = "";

        /// <summary>Subject distinguished name as .NET writes it (e.g. <c>CN=ward-3, O=Hospital</c>); or set <see cref="Thumbprint"/>.</summary>
        public string Subject { get; set; } = "";

        public List<string> Roles { get; set; } = [];

        public bool Matches(System.Security.Cryptography.X509Certificates.X509Certificate2 certificate) =>
            !string.IsNullOrEmpty(Thumbprint)
                ? string.Equals(Thumbprint.Replace(" ", "", StringComparison.Ordinal).Replace(":", "", StringComparison.Ordinal), certificate.Thumbprint, StringComparison.OrdinalIgnoreCase)
                : string.Equals(Subject, certificate.Subject, StringComparison.Ordinal);
    }

    public sealed class JwtSettings
    {
        /// <summary>OpenID Connect issuer URL: signing keys are discovered from it. Empty (default): use <see cref="SigningKeyPath"/> or <see cref="SigningKeyPem"/>.</summary>
        public string Authority { get; set; } = "";

        /// <summary>Expected <c>iss</c> (defaults to the Authority's).</summary>
        public string Issuer { get; set; } = "";

        /// <summary>Expected <c>aud</c>; required.</summary>
        public string Audience { get; set; } = "";

        /// <summary>PEM file with the issuer's public key (RSA or EC) that signs tokens.</summary>
        public string SigningKeyPath { get; set; } = "";

        /// <summary>The same key as PEM text.</summary>
        public string SigningKeyPem { get; set; } = "";

        /// <summary>Claims whose values are roles (space-separated values are split, as OAuth scopes are). Default <c>roles</c>, <c>scope</c>.</summary>
        public List<string> RoleClaims { get; set; } = ["roles", "scope"];

        public bool Configured => !string.IsNullOrEmpty(Authority) || !string.IsNullOrEmpty(SigningKeyPath) || !string.IsNullOrEmpty(SigningKeyPem);
    }

    public sealed class TlsSettings
    {
        /// <summary>Server certificate as PEM text (with <see cref="KeyPem"/>), for https endpoints without a configured Certificate; e.g. from a secret in an environment variable.</summary>
        public string CertificatePem { get; set; } = "";

        public string KeyPem { get; set; } = "";

        /// <summary>PEM file of the CA(s) that sign client certificates. Set (or <see cref="ClientCaPem"/>): https endpoints require a client certificate chaining to it (mutual TLS).</summary>
        public string ClientCaPath { get; set; } = "";

        public string ClientCaPem { get; set; } = "";

        public bool MutualTls => !string.IsNullOrEmpty(ClientCaPath) || !string.IsNullOrEmpty(ClientCaPem);
    }
}

/// <summary>Method names that per-method policies refer to.</summary>
public static class SecurityMethods
{
    public static readonly IReadOnlyList<string> Classifier = ["Classify", "ClassifyStream", "GetModelInfo"];

    /// <summary>The Open Inference Protocol's methods (<c>inference.GRPCInferenceService</c>).</summary>
    public static readonly IReadOnlyList<string> Inference =
        ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics"];

    /// <summary>Inference methods open to anyone, as gRPC health is: liveness and readiness probes.</summary>
    public static readonly IReadOnlyList<string> Anonymous = ["ServerLive", "ServerReady"];

    public const string ClassifierService = "xray.v1.Classifier";
    public const string InferenceService = "inference.GRPCInferenceService";

    /// <summary>The authorization policy of a method, e.g. <c>xray.v1.Classifier/Classify</c>.</summary>
    public static string PolicyName(string service, string method) => $"{service}/{method}";

    /// <summary>The authorization policy of a Classifier method, e.g. <c>xray.v1.Classifier/Classify</c>.</summary>
    public static string PolicyName(string method) => PolicyName(ClassifierService, method);

    public const string MetricsPolicy = "xray.metrics";
    public const string CallerPolicy = "xray.caller";
    public const string AdminPolicy = "xray.admin";
}
