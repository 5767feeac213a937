using XRay.Server.Telemetry;

namespace XRay.Server.Hosting;

/// <summary>Builds the server application; shared by <c>Program</c> and the end-to-end tests.</summary>
public static class XRayServerApp
{
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            Args = args,
            // appsettings.json sits beside the binary, wherever the server is started from.
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Configuration.AddCommandLine(args, ServingExtensions.SwitchMappings.ToDictionary());
        builder.Services.AddXrayServing(builder.Configuration);
        builder.Services.AddXrayTransportLimits(builder.Configuration);
        builder.Services.AddXraySecurity(builder.Configuration);
        configure?.Invoke(builder);

        WebApplication app = builder.Build();
        app.UseRouting();
        app.UseXraySecurity();
        app.UseHeaderAdmission();
        app.UseGrpcFrameGuard();
        app.UseXrayMetricsEndpoint();
        app.UseXrayAdminEndpoint();
        app.MapXrayServing();
        return app;
    }
}
