using Google.Protobuf;
using Grpc.Core;
using XRay.Client;
using XRay.Contracts.V1;
using XRay.Server.Tests.Infrastructure;

namespace XRay.Server.Tests.Transport;

/// <summary>
/// Thousands of seeded mutations of valid requests, sent raw: every one is answered, with OK (and finite numbers),
/// INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never UNKNOWN, INTERNAL or a hang; the server still answers afterwards.
/// </summary>
public sealed class MutationTests
{
    private const int Size = 224;
    private const int Mutations = 3000;
    private const int Parallelism = 8;

    private static readonly StatusCode[] Allowed = [StatusCode.OK, StatusCode.InvalidArgument, StatusCode.ResourceExhausted];

    private static byte[][] Seeds()
    {
        var normalised = Images.RandomNormalised(Size * Size, 2);
        return
        [
            new ClassifyRequest { RequestId = "u8", Tensor = Tensors.UInt8(Images.RandomPixels(Size * Size, 1), 1, Size, Size) }.ToByteArray(),
            new ClassifyRequest { RequestId = "f32", Tensor = Tensors.Float32(normalised, 1, Size, Size) }.ToByteArray(),
            new ClassifyRequest { RequestId = "u8x2", Tensor = Tensors.UInt8(Images.RandomPixels(2 * 3 * Size * Size, 3), 2, 3, Size, Size) }.ToByteArray(),
            new ClassifyRequest { RequestId = "png", Encoded = new EncodedImages { Images = { ByteString.CopyFrom(Images.Png(96, 80, 4)) } } }.ToByteArray(),
        ];
    }

    private static byte[] Mutate(byte[] seed, Random random)
    {
        var bytes = new List<byte>(seed);
        int edits = random.Next(1, 5);
        for (int e = 0; e < edits && bytes.Count > 0; e++)
        {
            // Half the edits land in the first 64 bytes, where the request id, shape and field tags are.
            int at = random.Next(2) == 0 ? random.Next(Math.Min(64, bytes.Count)) : random.Next(bytes.Count);
            switch (random.Next(6))
            {
                case 0: bytes[at] ^= (byte)(1 << random.Next(8)); break;
                case 1: bytes[at] = (byte)new[] { 0x00, 0xFF, 0x7F, 0x80, 0x0A, 0x12 }[random.Next(6)]; break;
                case 2: bytes.RemoveRange(at, Math.Min(bytes.Count - at, random.Next(1, 16))); break;
                case 3: bytes.InsertRange(at, Enumerable.Range(0, random.Next(1, 8)).Select(_ => (byte)random.Next(256))); break;
                case 4: bytes.RemoveRange(at, bytes.Count - at); break;
                default:
                    // Four random bytes: in float data, often NaN, infinity or a huge value.
                    for (int i = at; i < Math.Min(bytes.Count, at + 4); i++) bytes[i] = (byte)random.Next(256);
                    break;
            }
        }
        return [.. bytes];
    }

    private static byte[] Frame(byte[] message, Random random) => random.Next(10) switch
    {
        0 => RawGrpc.Frame(message, length: (uint)random.Next()),
        1 => RawGrpc.Frame(message, flag: (byte)random.Next(256)),
        _ => RawGrpc.Frame(message),
    };

    [Fact]
    public async Task MutatedRequests_AreAnsweredPrecisely_WithFiniteNumbersWhenOk()
    {
        await using var server = await TestServer.StartAsync(new FakeModelBackendFactory(new FakeModelBackend()),
            waitUntilServing: true, "--Serving:MaxReceiveMessageBytes=4194304");
        byte[][] seeds = Seeds();
        var counts = new Dictionary<StatusCode, int>();
        using var raw = new RawGrpc(server.Address);

        await Parallel.ForAsync(0, Mutations, new ParallelOptions { MaxDegreeOfParallelism = Parallelism }, async (i, _) =>
        {
            // One generator per mutation: the same seed gives the same request whatever the scheduling.
            var random = new Random(20261202 + i);
            byte[] body = Frame(Mutate(seeds[i % seeds.Length], random), random);
            RawResult result = await raw.CallAsync(RawGrpc.Classify, body);

            Assert.True(Allowed.Contains(result.Status), $"mutation {i}: {result.Status} '{result.Message}'");
            if (result.Status == StatusCode.OK)
            {
                ClassifyResponse response = ClassifyResponse.Parser.ParseFrom(Assert.Single(result.Messages));
                Assert.NotEmpty(response.Predictions);
                Assert.All(response.Predictions, prediction =>
                {
                    Assert.All(prediction.Logits, value => Assert.True(float.IsFinite(value), $"mutation {i}: logit {value}"));
                    Assert.All(prediction.Probabilities, value => Assert.True(float.IsFinite(value), $"mutation {i}: probability {value}"));
                });
            }
            lock (counts) counts[result.Status] = counts.GetValueOrDefault(result.Status) + 1;
        }).WaitAsync(TimeSpan.FromMinutes(5));

        // Both outcomes occur: the mutations reach the parser and the model, not only one of them.
        Assert.True(counts.GetValueOrDefault(StatusCode.OK) > 100, string.Join(", ", counts));
        Assert.True(counts.GetValueOrDefault(StatusCode.InvalidArgument) > 100, string.Join(", ", counts));
        ClassifyResponse after = await server.Client.ClassifyAsync(Traffic.Request(9, "after")).WaitAsync(TestServer.Timeout);
        Assert.Equal("after", after.RequestId);
    }
}
