using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Server.Kestrel;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using XRay.Contracts.V1;

namespace XRay.Server.Hosting;

/// <summary>
/// The Admin endpoint (<c>Kestrel:Endpoints:Admin</c>, command line <c>--admin-url</c>): off unless configured.
/// It serves xray.v1.ModelAdmin and nothing else, and ModelAdmin is served nowhere else, so that binding it to
/// loopback (or a network only operators reach) is what protects model swaps. HTTP/2 unless configured otherwise.
/// </summary>
public static class AdminEndpoint
{
    public const string Name = "Admin";

    // Set on every connection accepted by the Admin endpoint, whatever port it was given (tests bind port 0).
    private const string ConnectionItem = "xray.admin-endpoint";
    private static readonly PathString ServicePath = $"/{ModelAdmin.Descriptor.FullName}";

    public static IServiceCollection AddXrayAdminEndpoint(this IServiceCollection services, IConfiguration configuration) =>
        services.Configure<KestrelServerOptions>(kestrel =>
        {
            KestrelConfigurationLoader loader = kestrel.ConfigurationLoader ?? kestrel.Configure(configuration.GetSection("Kestrel"));
            loader.Endpoint(Name, endpoint =>
            {
                if (endpoint.ConfigSection["Protocols"] is null)
                {
                    endpoint.ListenOptions.Protocols = HttpProtocols.Http2;
                }
                endpoint.ListenOptions.Use(next => connection =>
                {
                    connection.Items[ConnectionItem] = true;
                    return next(connection);
                });
            });
        });

    /// <summary>404 for ModelAdmin calls on other endpoints and for anything else on the Admin endpoint.</summary>
    public static IApplicationBuilder UseXrayAdminEndpoint(this IApplicationBuilder app) =>
        app.Use((context, next) =>
        {
            bool adminConnection = context.Features.Get<IConnectionItemsFeature>()?.Items.ContainsKey(ConnectionItem) == true;
            if (adminConnection != context.Request.Path.StartsWithSegments(ServicePath))
            {
                context.Response.StatusCode = StatusCodes.Status404NotFound;
                return Task.CompletedTask;
            }
            return next(context);
        });
}
