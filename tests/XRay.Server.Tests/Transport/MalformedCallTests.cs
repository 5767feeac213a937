using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Server.Grpc;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests.Transport;

/// <summary>
/// Malformed calls sent at the HTTP/2 level, each answered with a precise status and one warning (no error, no stack
/// trace), and each followed by a valid request that must still be answered correctly.
/// </summary>
public sealed class MalformedCallTests(MalformedCallTests.Server fixture) : IClassFixture<MalformedCallTests.Server>
{
    private const int Size = 224;
    private const int MaxMessageBytes = 1 << 20;

    public sealed class Server : IAsyncLifetime
    {
        internal FakeModelBackend Backend { get; } = new();
        internal TestServer Instance { get; private set; } = null!;

        public async Task InitializeAsync() =>
            Instance = await TestServer.StartAsync(new FakeModelBackendFactory(Backend), builder =>
            {
                builder.Logging.AddFakeLogging();
                builder.Logging.SetMinimumLevel(LogLevel.Information);
                // Every case's line is checked: a budget no case here can exhaust (MalformedCallLogTests checks the cap).
                builder.Services.Replace(ServiceDescriptor.Singleton(new LogBudget(10_000, TimeProvider.System)));
            }, waitUntilServing: true, $"--Serving:MaxReceiveMessageBytes={MaxMessageBytes}", "--Transport:MaxRequestIdLength=64");

        public Task DisposeAsync() => Instance.DisposeAsync().AsTask();
    }

    private static byte[] Valid(string id = "ok") => new ClassifyRequest
    {
        RequestId = id,
        Tensor = Tensors.UInt8(Images.RandomPixels(Size * Size, 3), 1, Size, Size),
    }.ToByteArray();

    private static byte[] Float32Request(float value)
    {
        var values = new float[Size * Size];
        values[100] = value;
        return new ClassifyRequest { RequestId = "f", Tensor = Tensors.Float32(values, 1, Size, Size) }.ToByteArray();
    }

    // request_id (field 1, length-delimited) holding bytes that are not UTF-8.
    private static byte[] NonUtf8RequestId() => [0x0A, 0x02, 0xC3, 0x28, .. Valid()];

    public static TheoryData<string, string, byte[], StatusCode> Cases => new()
    {
        { "garbage protobuf", RawGrpc.Classify, RawGrpc.Frame([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), StatusCode.InvalidArgument },
        { "truncated protobuf", RawGrpc.Classify, RawGrpc.Frame(Valid().AsSpan(0, 40)), StatusCode.InvalidArgument },
        { "request_id not UTF-8", RawGrpc.Classify, RawGrpc.Frame(NonUtf8RequestId()), StatusCode.InvalidArgument },
        { "request_id too long", RawGrpc.Classify, RawGrpc.Frame(Valid(new string('x', 65))), StatusCode.InvalidArgument },
        { "frame length 4 GiB", RawGrpc.Classify, RawGrpc.Frame(Valid(), length: uint.MaxValue), StatusCode.ResourceExhausted },
        { "frame length over the limit", RawGrpc.Classify, RawGrpc.Frame(Valid(), length: MaxMessageBytes + 1), StatusCode.ResourceExhausted },
        { "message over the limit", RawGrpc.Classify, RawGrpc.Frame(new byte[MaxMessageBytes + 10]), StatusCode.ResourceExhausted },
        { "body ends inside the message", RawGrpc.Classify, RawGrpc.Frame(Valid().AsSpan(0, 100), length: 1000), StatusCode.InvalidArgument },
        { "body ends inside the prefix", RawGrpc.Classify, [0, 0, 0], StatusCode.InvalidArgument },
        { "empty body", RawGrpc.Classify, [], StatusCode.InvalidArgument },
        { "compressed flag 2", RawGrpc.Classify, RawGrpc.Frame(Valid(), flag: 2), StatusCode.InvalidArgument },
        { "two messages on a unary call", RawGrpc.Classify, [.. RawGrpc.Frame(Valid()), .. RawGrpc.Frame(Valid())], StatusCode.InvalidArgument },
        { "float 3.4e38", RawGrpc.Classify, RawGrpc.Frame(Float32Request(3.4e38f)), StatusCode.InvalidArgument },
        { "float NaN", RawGrpc.Classify, RawGrpc.Frame(Float32Request(float.NaN)), StatusCode.InvalidArgument },
        { "stream: garbage protobuf", RawGrpc.ClassifyStream, RawGrpc.Frame([0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), StatusCode.InvalidArgument },
        { "stream: frame length 4 GiB", RawGrpc.ClassifyStream, RawGrpc.Frame(Valid(), length: uint.MaxValue), StatusCode.ResourceExhausted },
        { "stream: ends inside a message", RawGrpc.ClassifyStream, [.. RawGrpc.Frame(Valid()), .. RawGrpc.Frame(Valid().AsSpan(0, 10), length: 500)], StatusCode.InvalidArgument },
        { "stream: request_id not UTF-8", RawGrpc.ClassifyStream, RawGrpc.Frame(NonUtf8RequestId()), StatusCode.InvalidArgument },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task MalformedCall_GetsPreciseStatus_AndTheServerStillAnswers(string name, string path, byte[] body, StatusCode expected)
    {
        TestServer server = fixture.Instance;
        FakeLogCollector logs = server.App.Services.GetFakeLogCollector();
        logs.Clear();
        using var raw = new RawGrpc(server.Address);

        RawResult result = await raw.CallAsync(path, body);

        Assert.True(expected == result.Status, $"{name}: {result.Status} '{result.Message}'");
        Assert.InRange(result.Message.Length, 10, 300);
        FakeLogRecord[] records = logs.GetSnapshot().ToArray();
        Assert.DoesNotContain(records, record => record.Level >= LogLevel.Error);
        Assert.DoesNotContain(records, record => record.Level >= LogLevel.Warning && record.Exception is not null);
        Assert.Contains(records, record => record.Level == LogLevel.Warning || record.Id.Id == 11);

        // The next valid request, raw and through the generated client, is answered correctly.
        RawResult next = await raw.CallAsync(RawGrpc.Classify, RawGrpc.Frame(Valid("after")));
        Assert.Equal(StatusCode.OK, next.Status);
        ClassifyResponse response = ClassifyResponse.Parser.ParseFrom(Assert.Single(next.Messages));
        Assert.Equal("after", response.RequestId);
        var image = new float[Size * Size];
        var request = ClassifyRequest.Parser.ParseFrom(Valid());
        ClassifyResponse viaClient = await server.Client.ClassifyAsync(request).WaitAsync(TestServer.Timeout);
        Assert.Equal(response.Predictions[0].Logits, viaClient.Predictions[0].Logits);
        Assert.All(viaClient.Predictions[0].Logits, logit => Assert.True(float.IsFinite(logit)));
    }

    [Fact]
    public async Task OversizedUnaryBody_DeclaredByContentLength_IsResourceExhausted()
    {
        using var raw = new RawGrpc(fixture.Instance.Address);
        byte[] body = RawGrpc.Frame(new byte[MaxMessageBytes + 100], length: 10);

        RawResult result = await raw.CallAsync(RawGrpc.Classify, body, contentLength: body.Length);

        Assert.Contains(result.Status, new[] { StatusCode.ResourceExhausted, StatusCode.InvalidArgument });
        Assert.Equal(StatusCode.OK, (await raw.CallAsync(RawGrpc.Classify, RawGrpc.Frame(Valid()))).Status);
    }

    [Fact]
    public async Task LongControlCharacterRequestId_IsEscapedAndCutInTheLog()
    {
        TestServer server = fixture.Instance;
        FakeLogCollector logs = server.App.Services.GetFakeLogCollector();
        logs.Clear();
        string id = "line1\nFORGED " + new string('y', 50);
        var request = new ClassifyRequest { RequestId = id, Tensor = Tensors.UInt8(new byte[3 * 5 * 5], 3, 5, 5) };

        Assert.Equal(StatusCode.InvalidArgument, await Traffic.StatusOf(server.Client.ClassifyAsync(request)));

        FakeLogRecord rejected = Assert.Single(logs.GetSnapshot(), record => record.Id.Id == 11);
        Assert.DoesNotContain("\n", rejected.Message);
        Assert.Contains("line1\\u000aFORGED", rejected.Message);
    }
}
