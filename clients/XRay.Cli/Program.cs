return await XRay.Cli.CliApp.RunAsync(args, Console.Out, Console.Error, interactive: true);
