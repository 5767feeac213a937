using Google.Protobuf;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Microsoft.Extensions.Options;
using XRay.Contracts.Inference;
using XRay.Server.Telemetry;

namespace XRay.Server.Grpc;

/// <summary>
/// Binds <c>inference.GRPCInferenceService</c> to <see cref="InferenceEndpoint"/> with marshallers that, as xray.v1's do
/// (<see cref="ClassifierMethodProvider"/>), refuse a message that does not parse, or whose <c>id</c> is longer than
/// Transport:MaxRequestIdLength, with INVALID_ARGUMENT and one warning line, before the service sees it.
/// </summary>
internal sealed class InferenceMethodProvider(IOptions<TransportOptions> transport, MalformedCallLog malformed)
    : IServiceMethodProvider<InferenceEndpoint>
{
    private static readonly string ServiceName = GRPCInferenceService.Descriptor.FullName;

    public void OnServiceMethodDiscovery(ServiceMethodProviderContext<InferenceEndpoint> context)
    {
        Unary(context, "ServerLive", ServerLiveRequest.Parser, (endpoint, request, call) => endpoint.ServerLive(request, call));
        Unary(context, "ServerReady", ServerReadyRequest.Parser, (endpoint, request, call) => endpoint.ServerReady(request, call));
        Unary(context, "ModelReady", ModelReadyRequest.Parser, (endpoint, request, call) => endpoint.ModelReady(request, call));
        Unary(context, "ServerMetadata", ServerMetadataRequest.Parser, (endpoint, request, call) => endpoint.ServerMetadata(request, call));
        Unary(context, "ModelMetadata", ModelMetadataRequest.Parser, (endpoint, request, call) => endpoint.ModelMetadata(request, call));
        Unary(context, "ModelConfig", ModelConfigRequest.Parser, (endpoint, request, call) => endpoint.ModelConfig(request, call));
        Unary(context, "ModelStatistics", ModelStatisticsRequest.Parser, (endpoint, request, call) => endpoint.ModelStatistics(request, call));

        int maxIdLength = transport.Value.MaxRequestIdLength;
        context.AddUnaryMethod(
            new Method<ModelInferRequest, ModelInferResponse>(MethodType.Unary, ServiceName, "ModelInfer", InferRequests("ModelInfer", maxIdLength), Responses<ModelInferResponse>()),
            [], (endpoint, request, call) => endpoint.ModelInfer(request, call));
        context.AddDuplexStreamingMethod(
            new Method<ModelInferRequest, ModelStreamInferResponse>(MethodType.DuplexStreaming, ServiceName, "ModelStreamInfer",
                InferRequests("ModelStreamInfer", maxIdLength), Responses<ModelStreamInferResponse>()),
            [], (endpoint, requests, writer, call) => endpoint.ModelStreamInfer(requests, writer, call));
    }

    private void Unary<TRequest, TResponse>(ServiceMethodProviderContext<InferenceEndpoint> context, string name, MessageParser<TRequest> parser,
        UnaryServerMethod<InferenceEndpoint, TRequest, TResponse> handler)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse>
    {
        var requests = Marshallers.Create<TRequest>(Serialize, payload => Parse(parser, payload, name));
        context.AddUnaryMethod(new Method<TRequest, TResponse>(MethodType.Unary, ServiceName, name, requests, Responses<TResponse>()), [], handler);
    }

    private Marshaller<ModelInferRequest> InferRequests(string method, int maxIdLength) => Marshallers.Create<ModelInferRequest>(Serialize, payload =>
    {
        ModelInferRequest request = Parse(ModelInferRequest.Parser, payload, method);
        if (request.Id.Length > maxIdLength)
        {
            throw Refuse(method, $"id has {request.Id.Length} characters; at most {maxIdLength} are accepted (Transport:MaxRequestIdLength).");
        }
        return request;
    });

    private static Marshaller<T> Responses<T>() where T : class, IMessage<T> =>
        Marshallers.Create<T>(Serialize, _ => throw new NotSupportedException());

    private T Parse<T>(MessageParser<T> parser, DeserializationContext payload, string method) where T : IMessage<T>
    {
        try
        {
            return parser.ParseFrom(payload.PayloadAsReadOnlySequence());
        }
        catch (InvalidProtocolBufferException ex)
        {
            // The library's messages are fixed texts, never the caller's bytes.
            throw Refuse(method, $"The message is not a valid {typeof(T).Name}: {ex.Message}");
        }
    }

    private RpcException Refuse(string method, string detail)
    {
        malformed.Write(ServiceName, method, StatusCode.InvalidArgument, detail);
        return new RpcException(new Status(StatusCode.InvalidArgument, detail));
    }

    private static void Serialize<T>(T message, SerializationContext context) where T : IMessage
    {
        context.SetPayloadLength(message.CalculateSize());
        message.WriteTo(context.GetBufferWriter());
        context.Complete();
    }
}
