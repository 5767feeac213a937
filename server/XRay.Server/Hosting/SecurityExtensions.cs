using System.Security.Claims;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Encodings.Web;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Reflection;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.JwtBearer;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Authorization.Policy;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Microsoft.IdentityModel.Tokens;
using XRay.Contracts.V1;
using XRay.Server.Grpc;
using XRay.Server.Telemetry;

namespace XRay.Server.Hosting;

/// <summary>
/// TLS from PEM, mutual TLS against a client CA, caller authentication (API keys, JWT bearer tokens) with a policy per
/// Classifier method, configurable reflection, and an optionally protected <c>/metrics</c>.
/// </summary>
public static class SecurityExtensions
{
    public const string ApiKeyScheme = "ApiKey";
    public const string ClientCertificateScheme = "ClientCertificate";

    public static IServiceCollection AddXraySecurity(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<SecurityOptions>().Bind(configuration.GetSection(SecurityOptions.SectionName))
            .ValidateDataAnnotations().ValidateOnStart();
        // Schemes and policies are built from the settings now; ValidateOnStart reports bad ones before anything runs.
        SecurityOptions options = configuration.GetSection(SecurityOptions.SectionName).Get<SecurityOptions>() ?? new();

        services.Configure<KestrelServerOptions>(kestrel => kestrel.ConfigureHttpsDefaults(https => ConfigureTls(https, options.Tls)));

        var schemes = new List<string>();
        AuthenticationBuilder authentication = services.AddAuthentication();
        if (options.ApiKeys.Count > 0)
        {
            authentication.AddScheme<AuthenticationSchemeOptions, ApiKeyAuthenticationHandler>(ApiKeyScheme, null);
            schemes.Add(ApiKeyScheme);
        }
        if (options.Jwt.Configured)
        {
            authentication.AddJwtBearer(jwt => ConfigureJwt(jwt, options.Jwt));
            schemes.Add(JwtBearerDefaults.AuthenticationScheme);
        }
        if (options.ClientCertificates.Count > 0)
        {
            authentication.AddScheme<AuthenticationSchemeOptions, ClientCertificateAuthenticationHandler>(ClientCertificateScheme, null);
            schemes.Add(ClientCertificateScheme);
        }

        services.AddAuthorization(authorization =>
        {
            AuthorizationPolicy Caller(string? role) => CallerPolicy(schemes, role, options.Jwt.RoleClaims);
            authorization.AddPolicy(SecurityMethods.CallerPolicy, Caller(null));
            authorization.AddPolicy(SecurityMethods.MetricsPolicy, Caller(options.MetricsRole));
            authorization.AddPolicy(SecurityMethods.AdminPolicy, Caller(options.AdminRole));
            foreach (string method in SecurityMethods.Classifier)
            {
                authorization.AddPolicy(SecurityMethods.PolicyName(method), Caller(options.MethodRoles.GetValueOrDefault(method)));
            }
            foreach (string method in SecurityMethods.Inference.Except(SecurityMethods.Anonymous))
            {
                authorization.AddPolicy(SecurityMethods.PolicyName(SecurityMethods.InferenceService, method), Caller(options.MethodRoles.GetValueOrDefault(method)));
            }
        });
        services.AddSingleton<IAuthorizationMiddlewareResultHandler, GrpcAuthorizationResultHandler>();

        // Reflection lists the services explicitly: the Classifier is mapped through ClassifierEndpoint, which the
        // default discovery (by generated base class) does not recognise.
        services.Replace(ServiceDescriptor.Singleton(new ReflectionServiceImpl(
            Classifier.Descriptor, XRay.Contracts.Inference.GRPCInferenceService.Descriptor, global::Grpc.Health.V1.Health.Descriptor, global::Grpc.Reflection.V1Alpha.ServerReflection.Descriptor)));
        return services;
    }

    /// <summary>Authentication and authorization for the gRPC endpoints, and the guard in front of <c>/metrics</c>. Before the metrics endpoint.</summary>
    public static IApplicationBuilder UseXraySecurity(this IApplicationBuilder app)
    {
        app.UseAuthentication();
        app.UseAuthorization();
        SecurityOptions options = app.ApplicationServices.GetRequiredService<IOptions<SecurityOptions>>().Value;
        if (options.ProtectMetrics)
        {
            app.Use(async (context, next) =>
            {
                if (context.Request.Path == TelemetryExtensions.ScrapePath && TelemetryExtensions.IsMetricsEndpoint(context))
                {
                    var policies = context.RequestServices.GetRequiredService<IAuthorizationPolicyProvider>();
                    AuthorizationPolicy policy = (await policies.GetPolicyAsync(SecurityMethods.MetricsPolicy))!;
                    var evaluator = context.RequestServices.GetRequiredService<IPolicyEvaluator>();
                    AuthenticateResult authenticated = await evaluator.AuthenticateAsync(policy, context);
                    PolicyAuthorizationResult authorized = await evaluator.AuthorizeAsync(policy, authenticated, context, resource: null);
                    if (!authorized.Succeeded)
                    {
                        context.Response.StatusCode = authorized.Challenged ? StatusCodes.Status401Unauthorized : StatusCodes.Status403Forbidden;
                        return;
                    }
                }
                await next(context);
            });
        }
        return app;
    }

    /// <summary>
    /// Per-method policies on the Classifier and Open Inference Protocol endpoints when authentication is required (the
    /// protocol's liveness and readiness stay open, as health does), the admin role on the Admin endpoint; reflection
    /// when enabled.
    /// </summary>
    public static IEndpointRouteBuilder MapXraySecurity(this IEndpointRouteBuilder endpoints, GrpcServiceEndpointConventionBuilder admin,
        params GrpcServiceEndpointConventionBuilder[] services)
    {
        SecurityOptions options = endpoints.ServiceProvider.GetRequiredService<IOptions<SecurityOptions>>().Value;
        if (options.RequireAuthentication)
        {
            // Model swaps: on the Admin endpoint only, and with authentication on, for callers with Security:AdminRole.
            admin.RequireAuthorization(SecurityMethods.AdminPolicy);
            foreach (GrpcServiceEndpointConventionBuilder service in services)
            {
                service.Add(endpoint =>
                {
                    if (endpoint.Metadata.OfType<GrpcMethodMetadata>().FirstOrDefault() is { } grpc
                        && !(grpc.Method.ServiceName == SecurityMethods.InferenceService && SecurityMethods.Anonymous.Contains(grpc.Method.Name)))
                    {
                        endpoint.Metadata.Add(new AuthorizeAttribute(SecurityMethods.PolicyName(grpc.Method.ServiceName, grpc.Method.Name)));
                    }
                });
            }
        }
        if (options.ReflectionEnabled)
        {
            var reflection = endpoints.MapGrpcReflectionService();
            if (options.RequireAuthentication)
            {
                reflection.RequireAuthorization(SecurityMethods.CallerPolicy);
            }
        }
        return endpoints;
    }

    private static AuthorizationPolicy CallerPolicy(IReadOnlyList<string> schemes, string? role, IReadOnlyList<string> roleClaims)
    {
        var policy = new AuthorizationPolicyBuilder();
        if (schemes.Count == 0)
        {
            // Nothing can authenticate: the policy is only used when authentication is required, which validation forbids.
            return policy.RequireAssertion(_ => false).Build();
        }
        policy.AddAuthenticationSchemes([.. schemes]).RequireAuthenticatedUser();
        if (!string.IsNullOrEmpty(role))
        {
            policy.RequireAssertion(context => HasRole(context.User, role, roleClaims));
        }
        return policy.Build();
    }

    private static bool HasRole(ClaimsPrincipal user, string role, IReadOnlyList<string> roleClaims) =>
        user.Claims.Any(claim =>
            (claim.Type == ClaimTypes.Role || roleClaims.Contains(claim.Type))
            && claim.Value.Split(' ', StringSplitOptions.RemoveEmptyEntries).Contains(role, StringComparer.Ordinal));

    private static void ConfigureTls(HttpsConnectionAdapterOptions https, SecurityOptions.TlsSettings tls)
    {
        if (!string.IsNullOrEmpty(tls.CertificatePem))
        {
            https.ServerCertificate = X509Certificate2.CreateFromPem(tls.CertificatePem, tls.KeyPem);
        }
        if (tls.MutualTls)
        {
            X509Certificate2Collection authorities = LoadAuthorities(tls);
            https.ClientCertificateMode = ClientCertificateMode.RequireCertificate;
            https.ClientCertificateValidation = (certificate, _, _) => ChainsTo(certificate, authorities);
        }
    }

    private static X509Certificate2Collection LoadAuthorities(SecurityOptions.TlsSettings tls)
    {
        var authorities = new X509Certificate2Collection();
        if (!string.IsNullOrEmpty(tls.ClientCaPath))
        {
            authorities.ImportFromPemFile(tls.ClientCaPath);
        }
        if (!string.IsNullOrEmpty(tls.ClientCaPem))
        {
            authorities.ImportFromPem(tls.ClientCaPem);
        }
        if (authorities.Count == 0)
        {
            throw new InvalidOperationException("Security:Tls: the client CA holds no certificate.");
        }
        return authorities;
    }

    /// <summary>Whether the client certificate chains to one of the configured CAs (and only those; revocation is not checked).</summary>
    public static bool ChainsTo(X509Certificate2 certificate, X509Certificate2Collection authorities)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(new Oid("1.3.6.1.5.5.7.3.2")); // client authentication
        return chain.Build(certificate);
    }

    private static void ConfigureJwt(JwtBearerOptions jwt, SecurityOptions.JwtSettings settings)
    {
        // Claims keep their JWT names (roles, scope, sub), so role claims are found as configured.
        jwt.MapInboundClaims = false;
        jwt.TokenValidationParameters.ValidAudience = settings.Audience;
        if (!string.IsNullOrEmpty(settings.Issuer))
        {
            jwt.TokenValidationParameters.ValidIssuer = settings.Issuer;
        }
        if (!string.IsNullOrEmpty(settings.Authority))
        {
            jwt.Authority = settings.Authority;
            return;
        }
        string pem = !string.IsNullOrEmpty(settings.SigningKeyPem) ? settings.SigningKeyPem : File.ReadAllText(settings.SigningKeyPath);
        jwt.TokenValidationParameters.IssuerSigningKey = SigningKey(pem);
    }

    private static SecurityKey SigningKey(string pem)
    {
        if (pem.Contains("EC PUBLIC KEY", StringComparison.Ordinal) || pem.Contains("EC PRIVATE KEY", StringComparison.Ordinal))
        {
            var ec = ECDsa.Create();
            ec.ImportFromPem(pem);
            return new ECDsaSecurityKey(ec);
        }
        var rsa = RSA.Create();
        try
        {
            rsa.ImportFromPem(pem);
            return new RsaSecurityKey(rsa);
        }
        catch (Exception ex) when (ex is ArgumentException or CryptographicException)
        {
            rsa.Dispose();
            // A SubjectPublicKeyInfo "PUBLIC KEY" may hold an EC key.
            var ec = ECDsa.Create();
            ec.ImportFromPem(pem);
            return new ECDsaSecurityKey(ec);
        }
    }

    /// <summary>Unauthenticated and unauthorised gRPC calls get UNAUTHENTICATED and PERMISSION_DENIED as gRPC statuses (not bare HTTP 401/403).</summary>
    private sealed class GrpcAuthorizationResultHandler : IAuthorizationMiddlewareResultHandler
    {
        private readonly AuthorizationMiddlewareResultHandler _default = new();

        public Task HandleAsync(RequestDelegate next, HttpContext context, AuthorizationPolicy policy, PolicyAuthorizationResult result)
        {
            bool grpc = context.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) == true;
            if (!grpc || result.Succeeded)
            {
                return _default.HandleAsync(next, context, policy, result);
            }
            (StatusCode code, string detail) = result.Challenged
                ? (StatusCode.Unauthenticated, "This call needs credentials: an API key (x-api-key) or a bearer token (authorization: Bearer ...).")
                : (StatusCode.PermissionDenied, "The caller's credentials do not grant this method.");
            // A trailers-only gRPC response: the status travels in the headers of an HTTP 200.
            context.Response.StatusCode = StatusCodes.Status200OK;
            context.Response.ContentType = "application/grpc";
            context.Response.Headers["grpc-status"] = ((int)code).ToString(System.Globalization.CultureInfo.InvariantCulture);
            context.Response.Headers["grpc-message"] = Uri.EscapeDataString(detail);
            return Task.CompletedTask;
        }
    }

    /// <summary>A successful authentication as <paramref name="name"/> with <paramref name="roles"/>, by <paramref name="scheme"/>.</summary>
    private static AuthenticateResult Authenticated(string scheme, string name, IEnumerable<string> roles)
    {
        var claims = new List<Claim> { new(ClaimTypes.Name, name) };
        claims.AddRange(roles.Select(role => new Claim(ClaimTypes.Role, role)));
        var principal = new ClaimsPrincipal(new ClaimsIdentity(claims, scheme));
        return AuthenticateResult.Success(new AuthenticationTicket(principal, scheme));
    }

    /// <summary>
    /// The caller a client certificate (already validated against the client CA by the TLS handshake) stands for, by
    /// thumbprint or subject (<see cref="SecurityOptions.ClientCertificates"/>); no result for a certificate not listed.
    /// </summary>
    private sealed class ClientCertificateAuthenticationHandler(
        IOptionsMonitor<AuthenticationSchemeOptions> schemeOptions,
        ILoggerFactory logger,
        UrlEncoder encoder,
        IOptions<SecurityOptions> security) : AuthenticationHandler<AuthenticationSchemeOptions>(schemeOptions, logger, encoder)
    {
        protected override Task<AuthenticateResult> HandleAuthenticateAsync()
        {
            if (Context.Connection.ClientCertificate is not { } certificate
                || security.Value.ClientCertificates.FirstOrDefault(entry => entry.Matches(certificate)) is not { } match)
            {
                return Task.FromResult(AuthenticateResult.NoResult());
            }
            return Task.FromResult(Authenticated(Scheme.Name, match.Name, match.Roles));
        }
    }

    /// <summary>API keys from <c>x-api-key</c> or <c>authorization: ApiKey KEY</c>, compared in constant time.</summary>
    private sealed class ApiKeyAuthenticationHandler(
        IOptionsMonitor<AuthenticationSchemeOptions> schemeOptions,
        ILoggerFactory logger,
        UrlEncoder encoder,
        IOptions<SecurityOptions> security) : AuthenticationHandler<AuthenticationSchemeOptions>(schemeOptions, logger, encoder)
    {
        protected override Task<AuthenticateResult> HandleAuthenticateAsync()
        {
            string? presented = Request.Headers["x-api-key"].FirstOrDefault();
            if (presented is null && Request.Headers.Authorization.FirstOrDefault() is { } authorization
                && authorization.StartsWith("ApiKey ", StringComparison.OrdinalIgnoreCase))
            {
                presented = authorization["ApiKey ".Length..].Trim();
            }
            if (string.IsNullOrEmpty(presented))
            {
                return Task.FromResult(AuthenticateResult.NoResult());
            }

            // Hashes have equal lengths, so the comparison takes the same time whatever was presented.
            byte[] hash = SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(presented));
            SecurityOptions.ApiKey? match = null;
            foreach (SecurityOptions.ApiKey key in security.Value.ApiKeys)
            {
                if (CryptographicOperations.FixedTimeEquals(hash, key.KeyHash))
                {
                    match = key;
                }
            }
            if (match is null)
            {
                return Task.FromResult(AuthenticateResult.Fail("Unknown API key."));
            }
            return Task.FromResult(Authenticated(Scheme.Name, match.Name, match.Roles));
        }
    }
}
