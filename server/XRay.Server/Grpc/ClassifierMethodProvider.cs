using Google.Protobuf;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Microsoft.Extensions.Options;
using XRay.Contracts.V1;

namespace XRay.Server.Grpc;

/// <summary>
/// Binds <c>xray.v1.Classifier</c> to <see cref="ClassifierEndpoint"/> with its own marshallers. grpc-dotnet parses a
/// unary request before any interceptor runs and reports a parse failure as UNKNOWN with an error-level stack trace;
/// these marshallers refuse a message that does not parse, or whose request_id is too long, with INVALID_ARGUMENT and
/// one warning line (<see cref="MalformedCallLog"/>), before the service sees it.
/// </summary>
internal sealed class ClassifierMethodProvider(IOptions<TransportOptions> transport, MalformedCallLog malformed)
    : IServiceMethodProvider<ClassifierEndpoint>
{
    private static readonly string ServiceName = Classifier.Descriptor.FullName;

    public void OnServiceMethodDiscovery(ServiceMethodProviderContext<ClassifierEndpoint> context)
    {
        int maxRequestIdLength = transport.Value.MaxRequestIdLength;
        Marshaller<ClassifyResponse> responses = Marshallers.Create<ClassifyResponse>(Serialize, _ => throw new NotSupportedException());

        context.AddUnaryMethod(
            new Method<ClassifyRequest, ClassifyResponse>(MethodType.Unary, ServiceName, "Classify", Requests("Classify", maxRequestIdLength), responses),
            [], (endpoint, request, call) => endpoint.Classify(request, call));
        context.AddDuplexStreamingMethod(
            new Method<ClassifyRequest, ClassifyResponse>(MethodType.DuplexStreaming, ServiceName, "ClassifyStream", Requests("ClassifyStream", maxRequestIdLength), responses),
            [], (endpoint, requests, writer, call) => endpoint.ClassifyStream(requests, writer, call));
        context.AddUnaryMethod(
            new Method<GetModelInfoRequest, ModelInfo>(MethodType.Unary, ServiceName, "GetModelInfo",
                Marshallers.Create<GetModelInfoRequest>(Serialize, payload => Parse(GetModelInfoRequest.Parser, payload, "GetModelInfo")),
                Marshallers.Create<ModelInfo>(Serialize, _ => throw new NotSupportedException())),
            [], (endpoint, request, call) => endpoint.GetModelInfo(request, call));
    }

    private Marshaller<ClassifyRequest> Requests(string method, int maxRequestIdLength) => Marshallers.Create<ClassifyRequest>(Serialize, payload =>
    {
        ClassifyRequest request = Parse(ClassifyRequest.Parser, payload, method);
        if (request.RequestId.Length > maxRequestIdLength)
        {
            throw Refuse(method, StatusCode.InvalidArgument,
                $"request_id has {request.RequestId.Length} characters; at most {maxRequestIdLength} are accepted (Transport:MaxRequestIdLength).");
        }
        return request;
    });

    private T Parse<T>(MessageParser<T> parser, DeserializationContext payload, string method) where T : IMessage<T>
    {
        try
        {
            return parser.ParseFrom(payload.PayloadAsReadOnlySequence());
        }
        catch (InvalidProtocolBufferException ex)
        {
            // The library's messages are fixed texts ("String is invalid UTF-8." ...), never the caller's bytes.
            throw Refuse(method, StatusCode.InvalidArgument, $"The message is not a valid {typeof(T).Name}: {ex.Message}");
        }
    }

    private RpcException Refuse(string method, StatusCode code, string detail)
    {
        malformed.Write(ServiceName, method, code, detail);
        return new RpcException(new Status(code, detail));
    }

    private static void Serialize<T>(T message, SerializationContext context) where T : IMessage
    {
        context.SetPayloadLength(((IMessage)message).CalculateSize());
        message.WriteTo(context.GetBufferWriter());
        context.Complete();
    }
}
