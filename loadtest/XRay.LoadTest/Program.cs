// bench compares the raw model in this process with the server, which runs on jemalloc: match it.
if (args.Length > 0 && args[0] == "bench") XRay.Model.NativeAllocator.PreloadJemalloc();

return await XRay.LoadTest.LoadTestApp.RunAsync(args, Console.Out, Console.Error, interactive: true);
