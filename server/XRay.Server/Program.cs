using XRay.Server.Hosting;

// --help, start-up checks before the model loads, one line and a documented exit code for each mistake (README, "Exit codes").
return ServerCommand.Run(args, Console.Out, Console.Error);
