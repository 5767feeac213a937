using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace XRay.Server.Tests.Infrastructure;

/// <summary>A CA and certificates it signs, generated for one test run and written as PEM files into a temporary folder.</summary>
internal sealed class TestCertificates : IDisposable
{
    public TestCertificates(string name)
    {
        Folder = Directory.CreateTempSubdirectory("xray-certs-").FullName;
        using ECDsa caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name} test CA", caKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        Authority = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        AuthorityPath = Write($"{name}-ca.pem", Authority.ExportCertificatePem());
    }

    public string Folder { get; }
    public X509Certificate2 Authority { get; }
    public string AuthorityPath { get; }

    /// <summary>A server certificate for 127.0.0.1 and localhost: PEM text of the certificate and of its key.</summary>
    public (string Certificate, string Key) Server() => Issue("CN=localhost", serverAuth: true);

    /// <summary>A client certificate, written as PEM files: (certificate path, key path).</summary>
    public (string CertificatePath, string KeyPath) Client(string name)
    {
        (string certificate, string key) = Issue($"CN={name}", serverAuth: false);
        return (Write($"{name}.pem", certificate), Write($"{name}.key", key));
    }

    private (string Certificate, string Key) Issue(string subject, bool serverAuth)
    {
        using ECDsa key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid(serverAuth ? "1.3.6.1.5.5.7.3.1" : "1.3.6.1.5.5.7.3.2")], false));
        if (serverAuth)
        {
            var names = new SubjectAlternativeNameBuilder();
            names.AddDnsName("localhost");
            names.AddIpAddress(System.Net.IPAddress.Loopback);
            request.CertificateExtensions.Add(names.Build());
        }
        byte[] serial = RandomNumberGenerator.GetBytes(8);
        using X509Certificate2 issued = request.Create(Authority, DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(29), serial);
        return (issued.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem());
    }

    private string Write(string file, string pem)
    {
        string path = Path.Combine(Folder, file);
        File.WriteAllText(path, pem);
        return path;
    }

    public void Dispose()
    {
        Authority.Dispose();
        Directory.Delete(Folder, recursive: true);
    }
}
