using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;

namespace XRay.Client;

/// <summary>TLS trust, client certificates and per-call credentials from <see cref="XRayClientOptions"/>.</summary>
internal static class ClientSecurity
{
    public static void Apply(GrpcChannelOptions channel, XRayClientOptions options, bool https)
    {
        bool certificates = !string.IsNullOrEmpty(options.CaCertificatePath) || !string.IsNullOrEmpty(options.ClientCertificatePath);
        if (certificates && !https)
        {
            throw new ArgumentException("A CA or client certificate needs an https:// server address.");
        }
        if (certificates)
        {
            var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
            if (!string.IsNullOrEmpty(options.CaCertificatePath))
            {
                var authorities = new X509Certificate2Collection();
                authorities.ImportFromPemFile(options.CaCertificatePath);
                if (authorities.Count == 0)
                {
                    throw new ArgumentException($"{options.CaCertificatePath} holds no PEM certificate.");
                }
                handler.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                    certificate is not null && IsTrusted(new X509Certificate2(certificate), authorities, errors);
            }
            if (!string.IsNullOrEmpty(options.ClientCertificatePath))
            {
                X509Certificate2 client = X509Certificate2.CreateFromPemFile(options.ClientCertificatePath, options.ClientKeyPath);
                // SslStream on Linux needs the key in a form it can hand to OpenSSL: re-import as PKCS#12.
                handler.SslOptions.ClientCertificates = [X509CertificateLoader.LoadPkcs12(client.Export(X509ContentType.Pkcs12), null)];
            }
            channel.HttpHandler = handler;
        }

        if (!string.IsNullOrEmpty(options.BearerToken) || !string.IsNullOrEmpty(options.ApiKey))
        {
            CallCredentials credentials = CallCredentials.FromInterceptor((_, metadata) =>
            {
                if (!string.IsNullOrEmpty(options.BearerToken)) metadata.Add("authorization", $"Bearer {options.BearerToken}");
                if (!string.IsNullOrEmpty(options.ApiKey)) metadata.Add("x-api-key", options.ApiKey);
                return Task.CompletedTask;
            });
            channel.Credentials = ChannelCredentials.Create(https ? ChannelCredentials.SecureSsl : ChannelCredentials.Insecure, credentials);
            // Over http:// the secret travels in clear text: meant for loopback or a network that encrypts below gRPC.
            channel.UnsafeUseInsecureChannelCallCredentials = !https;
        }
    }

    /// <summary>The server certificate chains to one of the given CAs (the system's trust store is not consulted) and names the host.</summary>
    private static bool IsTrusted(X509Certificate2 certificate, X509Certificate2Collection authorities, SslPolicyErrors errors)
    {
        if ((errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
        {
            return false;
        }
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(certificate);
    }
}
