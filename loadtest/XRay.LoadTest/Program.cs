return await XRay.LoadTest.LoadTestApp.RunAsync(args, Console.Out, Console.Error, interactive: true);
