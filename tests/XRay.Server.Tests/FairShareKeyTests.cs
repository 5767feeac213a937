using System.Security.Claims;
using Grpc.Core;
using Microsoft.AspNetCore.Http;
using XRay.Server.Grpc;

namespace XRay.Server.Tests;

/// <summary>Whose fair share a request counts against: its authenticated caller, else its connection.</summary>
public sealed class FairShareKeyTests
{
    private static ServerCallContext Call(string peer, ClaimsPrincipal? user = null)
    {
        var http = new DefaultHttpContext();
        if (user is not null) http.User = user;
        return new TestCallContext(peer, http);
    }

    private static ClaimsPrincipal Caller(string name, string scheme) =>
        new(new ClaimsIdentity([new Claim(ClaimTypes.Name, name)], scheme));

    [Fact]
    public void Authenticated_TheCallerWhateverTheConnection_AnonymousTheConnection()
    {
        object first = ClassifierService.FairShareKey(Call("ipv4:127.0.0.1:1000", Caller("ward-3", "ApiKey")));
        object second = ClassifierService.FairShareKey(Call("ipv4:127.0.0.1:2000", Caller("ward-3", "ApiKey")));
        object other = ClassifierService.FairShareKey(Call("ipv4:127.0.0.1:1000", Caller("ward-4", "ApiKey")));
        object sameNameOtherScheme = ClassifierService.FairShareKey(Call("ipv4:127.0.0.1:1000", Caller("ward-3", "ClientCertificate")));

        Assert.Equal(first, second);
        Assert.NotEqual(first, other);
        Assert.NotEqual(first, sameNameOtherScheme);
        Assert.Equal("ipv4:127.0.0.1:1000", ClassifierService.FairShareKey(Call("ipv4:127.0.0.1:1000")));
        Assert.NotEqual(ClassifierService.FairShareKey(Call("ipv4:127.0.0.1:1000")), ClassifierService.FairShareKey(Call("ipv4:127.0.0.1:2000")));
    }

    private sealed class TestCallContext(string peer, HttpContext http) : ServerCallContext
    {
        private readonly Dictionary<object, object> _state = new() { ["__HttpContext"] = http };

        protected override string MethodCore => "/xray.v1.Classifier/Classify";
        protected override string HostCore => "localhost";
        protected override string PeerCore => peer;
        protected override DateTime DeadlineCore => DateTime.MaxValue;
        protected override Metadata RequestHeadersCore => [];
        protected override CancellationToken CancellationTokenCore => CancellationToken.None;
        protected override Metadata ResponseTrailersCore => [];
        protected override Status StatusCore { get; set; }
        protected override WriteOptions? WriteOptionsCore { get; set; }
        protected override AuthContext AuthContextCore => new(null, []);
        protected override IDictionary<object, object> UserStateCore => _state;
        protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => throw new NotSupportedException();
        protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
    }
}
