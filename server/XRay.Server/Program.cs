using XRay.Model;
using XRay.Server.Hosting;

NativeAllocator.PreloadJemalloc();

WebApplication app = XRayServerApp.Build(args);
app.Logger.LogInformation("Native allocator: {Allocator}", NativeAllocator.Describe());
app.Run();
