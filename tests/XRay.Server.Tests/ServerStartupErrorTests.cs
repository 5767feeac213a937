using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Configuration;
using XRay.Server.Hosting;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests;

/// <summary>
/// <c>xray-server</c> started with each mistake a user makes: one line on standard error naming the flag, setting or
/// file, the documented exit code (README, "Exit codes"), no stack trace, and the model never loaded.
/// </summary>
[Collection(nameof(ServerProcessCollection))]
public sealed class ServerStartupErrorTests
{
    public static TheoryData<string[], int, string> Mistakes => new()
    {
        { ["--bogus", "1"], 2, "unknown option '--bogus'" },
        { ["-x"], 2, "unknown option '-x'" },
        { ["serve"], 2, "unexpected argument 'serve'" },
        { ["--max-batch-size"], 2, "--max-batch-size needs a value" },
        { ["--Batchin:MaxBatchSize=4"], 2, "unknown option '--Batchin:MaxBatchSize'" },
        { ["--max-batch-size", "0"], 2, "Batching:MaxBatchSize is 0; it must be between 1 and" },
        { ["--max-batch-size", "abc"], 2, "Batching:MaxBatchSize: 'abc' is not a whole number" },
        { ["--max-queue-size", "0"], 2, "Batching:MaxQueueSize is 0" },
        { ["--warmup", "sometimes"], 2, "Model:Warmup must be powers-of-two, all, measure or none" },
        { ["--runtime", "onnxruntime", "--precision", "bf16"], 2, "Model:Runtime onnxruntime runs fp32 only" },
        { ["--model", "/nonexistent/checkpoint"], 3, "Model:Path '/nonexistent/checkpoint': no such folder" },
        { ["--Kestrel:Endpoints:Grpc:Certificate:Path=/nonexistent/server.pem"], 3, "Kestrel:Endpoints:Grpc:Certificate:Path '/nonexistent/server.pem': no such file" },
        { ["--Security:Tls:ClientCaPath=/nonexistent/ca.pem"], 3, "Security:Tls:ClientCaPath '/nonexistent/ca.pem': no such file" },
    };

    [Theory]
    [MemberData(nameof(Mistakes))]
    public async Task Mistake_PrintsOneLineAndExitsWithItsCode_BeforeLoadingTheModel(string[] arguments, int exitCode, string message)
    {
        using var server = ServerProcess.Start(arguments);
        await server.WaitForExitAsync();

        Assert.Equal(exitCode, server.ExitCode);
        string line = Assert.Single(Lines(server.ErrorOutput));
        Assert.StartsWith("xray-server: ", line);
        Assert.Contains(message, line);
        AssertNoStackTraceAndNoModel(server);
    }

    [Fact]
    public async Task Help_PrintsUsageAndExitsZero_WithoutStarting()
    {
        using var server = ServerProcess.Start(["--help"]);
        await server.WaitForExitAsync();

        Assert.Equal(0, server.ExitCode);
        Assert.Contains("Usage: xray-server [options]", server.Output);
        foreach ((string flag, string setting) in ServingExtensions.SwitchMappings)
        {
            Assert.Contains(flag, server.Output);
            Assert.Contains(setting, server.Output);
        }
        Assert.Equal("", server.ErrorOutput);
        Assert.DoesNotContain("Now listening", server.Output);
        AssertNoStackTraceAndNoModel(server);
    }

    [Fact]
    public async Task BusyPort_SaysWhichAddressAndExitsFour_BeforeLoadingTheModel()
    {
        using var holder = new TcpListener(IPAddress.Loopback, 0);
        holder.Start();
        int port = ((IPEndPoint)holder.LocalEndpoint).Port;

        using var server = ServerProcess.Start(["--grpc-url", $"http://127.0.0.1:{port}"]);
        await server.WaitForExitAsync();

        Assert.Equal(4, server.ExitCode);
        string line = Assert.Single(Lines(server.ErrorOutput));
        Assert.StartsWith($"xray-server: 127.0.0.1:{port} is already in use (Kestrel:Endpoints:Grpc:Url", line);
        Assert.Contains("--grpc-url", line);
        AssertNoStackTraceAndNoModel(server);
    }

    [Fact]
    public async Task UnreadableCheckpoint_IsOneLogLineAndExitThree()
    {
        string folder = Directory.CreateTempSubdirectory("xray-bad-checkpoint-").FullName;
        try
        {
            await File.WriteAllTextAsync(Path.Combine(folder, "manifest.json"), "{ not json");
            using var server = ServerProcess.Start(["--model", folder, "--warmup", "none"]);
            await server.WaitForExitAsync();

            Assert.Equal(3, server.ExitCode);
            Assert.Contains($"The checkpoint at '{folder}' cannot be read", server.Output);
            AssertNoStackTraceAndNoModel(server);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task CertificateThatIsNotOne_IsOneLineAndExitThree()
    {
        string folder = Directory.CreateTempSubdirectory("xray-bad-certificate-").FullName;
        try
        {
            string pem = Path.Combine(folder, "server.pem");
            await File.WriteAllTextAsync(pem, "not a certificate");
            using var server = ServerProcess.Start([$"--Kestrel:Endpoints:Grpc:Certificate:Path={pem}", $"--Kestrel:Endpoints:Grpc:Certificate:KeyPath={pem}"]);
            await server.WaitForExitAsync();

            Assert.Equal(3, server.ExitCode);
            string line = Assert.Single(Lines(server.ErrorOutput));
            Assert.StartsWith($"xray-server: Kestrel:Endpoints:Grpc:Certificate: '{pem}' with key '{pem}' cannot be read as a certificate", line);
            AssertNoStackTraceAndNoModel(server);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void CertificateCheck_AcceptsAPemCertificateAndKey_AndRefusesAKeyThatIsNotOne()
    {
        string folder = Directory.CreateTempSubdirectory("xray-certificate-").FullName;
        try
        {
            using var key = System.Security.Cryptography.RSA.Create(2048);
            var request = new System.Security.Cryptography.X509Certificates.CertificateRequest(
                "CN=localhost", key, System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.RSASignaturePadding.Pkcs1);
            using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddDays(1));
            string certificatePath = Path.Combine(folder, "server.crt"), keyPath = Path.Combine(folder, "server.key"), wrongKey = Path.Combine(folder, "wrong.key");
            File.WriteAllText(certificatePath, certificate.ExportCertificatePem());
            File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
            File.WriteAllText(wrongKey, certificate.ExportCertificatePem());

            static IConfiguration Settings(string certificate, string key) => new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Endpoints:Grpc:Url"] = "https://127.0.0.1:0",
                ["Kestrel:Endpoints:Grpc:Certificate:Path"] = certificate,
                ["Kestrel:Endpoints:Grpc:Certificate:KeyPath"] = key,
                ["Security:Tls:ClientCaPath"] = certificate,
            }).Build();

            Assert.Null(ServerCommand.UnreadableCertificate(Settings(certificatePath, keyPath), folder));
            Assert.StartsWith($"Kestrel:Endpoints:Grpc:Certificate: '{certificatePath}' with key '{wrongKey}' cannot be read",
                ServerCommand.UnreadableCertificate(Settings(certificatePath, wrongKey), folder));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static string[] Lines(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    private static void AssertNoStackTraceAndNoModel(ServerProcess server)
    {
        Assert.DoesNotMatch(@"(?m)^\s+at \S", server.Output);
        Assert.DoesNotContain("Unhandled exception", server.Output);
        Assert.DoesNotContain("Loaded model", server.Output);
    }
}
