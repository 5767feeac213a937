using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Spectre.Console;
using XRay.Client;
using XRay.Contracts.V1;

namespace XRay.Cli;

/// <summary>The <c>xray</c> command line: classify image files, show the model, check health.</summary>
internal static class CliApp
{
    public const string DefaultServer = "http://127.0.0.1:5051";
    public const string DefaultAdmin = "http://127.0.0.1:5052";

    /// <param name="interactive">Show progress on stderr when it is a terminal (false in tests).</param>
    public static Task<int> RunAsync(string[] args, TextWriter output, TextWriter error, bool interactive = false)
    {
        var server = new Option<string>("--server", "-s")
        {
            Description = "Server address: host:port, http://host:port, https://host:port or dns:///host:port; several, comma-separated, are called round-robin. Default: $XRAY_SERVER or " + DefaultServer + ".",
            DefaultValueFactory = _ => Environment.GetEnvironmentVariable("XRAY_SERVER") is { Length: > 0 } value ? value : DefaultServer,
            Recursive = true,
        };
        var timeout = new Option<double>("--timeout")
        {
            Description = "Deadline of each call, in seconds.",
            DefaultValueFactory = _ => 30,
            Recursive = true,
        };
        ToolCommandLine.MustBePositive(timeout, "seconds");
        var json = new Option<bool>("--json") { Description = "Print JSON instead of a table.", Recursive = true };
        var credentials = new CredentialOptions();

        var files = new Argument<string[]>("paths") { Description = "PNG or JPEG chest X-rays, or folders of them (searched recursively).", Arity = ArgumentArity.OneOrMore };
        var classify = new Command("classify", "Classify image files (PNG or JPEG) and folders of them; print the findings per file.") { files };
        classify.SetAction((result, ct) => ClassifyCommandAsync(result, server, timeout, credentials, result.GetValue(files)!, result.GetValue(json),
            output, error, interactive, ct));

        var info = new Command("info", "Show the served model: classes, thresholds, inputs, batching.");
        info.SetAction((result, ct) => Run(result, server, timeout, credentials, error, async client =>
        {
            ModelInfo model = await client.GetModelInfoAsync(ct);
            output.WriteLine(result.GetValue(json) ? JsonFormatter.Default.Format(model) : Describe(model));
            return ExitCodes.Ok;
        }));

        var health = new Command("health", "Check the server's gRPC health (exit 0 when SERVING, 7 when not).");
        health.SetAction((result, ct) => Run(result, server, timeout, credentials, error, async client =>
        {
            var status = await client.CheckHealthAsync(cancellationToken: ct);
            // As grpc.health.v1 spells it: SERVING, NOT_SERVING, SERVICE_UNKNOWN.
            string name = string.Concat(status.ToString().Select((c, i) => i > 0 && char.IsUpper(c) ? $"_{c}" : $"{char.ToUpperInvariant(c)}"));
            output.WriteLine(result.GetValue(json) ? new JsonObject { ["status"] = name }.ToJsonString() : name);
            return status == Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus.Serving ? ExitCodes.Ok : ExitCodes.NotServing;
        }));

        var admin = new Option<string>("--admin")
        {
            Description = "The server's Admin endpoint (Kestrel:Endpoints:Admin, e.g. 127.0.0.1:5052). Default: $XRAY_ADMIN or " + DefaultAdmin + ".",
            DefaultValueFactory = _ => Environment.GetEnvironmentVariable("XRAY_ADMIN") is { Length: > 0 } value ? value : DefaultAdmin,
        };
        var checkpoint = new Argument<string>("checkpoint") { Description = "Checkpoint folder as the server sees it; \"\" for the built-in default model." };
        var loadModel = new Command("load-model", "Load a checkpoint on the server and serve it in place of the current model, without dropping a request.")
        {
            checkpoint, admin,
        };
        loadModel.SetAction((result, ct) => LoadModelAsync(result.GetValue(admin)!, result.GetValue(checkpoint)!,
            TimeSpan.FromSeconds(Math.Max(result.GetValue(timeout), 300)), output, error, ct));

        var root = new RootCommand("XRay Serving client: multi-label chest X-ray classification over gRPC. Exit codes: README, \"Exit codes\".")
        {
            server, timeout, json, classify, info, health, loadModel,
        };
        foreach (Option option in credentials.All)
        {
            root.Options.Add(option);
        }
        return ToolCommandLine.InvokeAsync(root, "xray", args, output, error);
    }

    /// <summary>Builds the client and runs <paramref name="action"/>; the user's mistakes and the server's refusals become one line and an exit code.</summary>
    private static async Task<int> Run(ParseResult result, Option<string> server, Option<double> timeout, CredentialOptions credentials, TextWriter error,
        Func<XRayClassifierClient, Task<int>> action)
    {
        string address = result.GetValue(server)!;
        try
        {
            string[] addresses = address.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            using var client = new XRayClassifierClient(addresses, credentials.ApplyTo(result, new XRayClientOptions
            {
                Timeout = TimeSpan.FromSeconds(result.GetValue(timeout)),
                MaxAttempts = 1,
            }));
            return await action(client);
        }
        catch (Exception ex) when (ToolCommandLine.Describe(ex, address) is { } described)
        {
            error.WriteLine($"error: {described.Message}");
            return described.Code;
        }
    }

    /// <summary>ModelAdmin.LoadModel; loading and warming up a large model takes a while, so the deadline is at least 5 minutes.</summary>
    private static async Task<int> LoadModelAsync(string address, string path, TimeSpan timeout, TextWriter output, TextWriter error,
        CancellationToken cancellationToken)
    {
        try
        {
            using var channel = GrpcChannel.ForAddress(ServerAddress.Parse(address));
            var admin = new ModelAdmin.ModelAdminClient(channel);
            LoadModelResponse response = await admin.LoadModelAsync(new LoadModelRequest { Path = path },
                deadline: DateTime.UtcNow + timeout, cancellationToken: cancellationToken);
            output.WriteLine($"serving {response.Model.Name} {response.Model.Version} (was {response.PreviousName} {response.PreviousVersion}); " +
                             $"loaded and warmed up in {response.LoadSeconds:F1} s");
            return ExitCodes.Ok;
        }
        catch (RpcException ex) when (ex.StatusCode is StatusCode.FailedPrecondition or StatusCode.Aborted or StatusCode.InvalidArgument)
        {
            error.WriteLine($"error: the model was not loaded ({ex.StatusCode}): {ex.Status.Detail}");
            return ExitCodes.Refused;
        }
        catch (RpcException ex) when (ex.StatusCode == StatusCode.Unavailable && !ToolCommandLine.SpeaksHttp1(ex))
        {
            error.WriteLine($"error: cannot reach the Admin endpoint at {address}: {ex.Status.Detail}");
            return ExitCodes.Unreachable;
        }
        catch (Exception ex) when (ToolCommandLine.Describe(ex, address) is { } described)
        {
            error.WriteLine($"error: {described.Message}");
            return described.Code;
        }
    }

    private static async Task<int> ClassifyCommandAsync(ParseResult result, Option<string> server, Option<double> timeout, CredentialOptions credentials,
        string[] paths, bool asJson, TextWriter output, TextWriter error, bool interactive, CancellationToken cancellationToken)
    {
        IReadOnlyList<ImageInput> inputs = ImageInput.Expand(paths);
        if (inputs.All(input => input.Error is not null))
        {
            // Nothing to send: say so without calling the server.
            return Report(inputs, [], null, asJson, output, error);
        }
        return await Run(result, server, timeout, credentials, error, async client =>
        {
            ModelInfo model = await client.GetModelInfoAsync(cancellationToken);
            var outcomes = new FileOutcome?[inputs.Count];
            bool progress = interactive && inputs.Count > 1 && !Console.IsErrorRedirected;
            if (progress)
            {
                IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
                await console.Progress().AutoClear(true).StartAsync(async context =>
                {
                    ProgressTask task = context.AddTask("classifying", maxValue: inputs.Count);
                    await ClassifyEachAsync(client, inputs, outcomes, () => task.Increment(1), cancellationToken);
                });
            }
            else
            {
                await ClassifyEachAsync(client, inputs, outcomes, () => { }, cancellationToken);
            }
            return Report(inputs, outcomes, model, asJson, output, error);
        });
    }

    /// <summary>Files in flight at once: enough to fill a batch or two on the server, few enough for a folder of thousands.</summary>
    internal const int FilesInFlight = 16;

    /// <summary>One request per file, <see cref="FilesInFlight"/> at once (the server batches them); a file the server refuses does not stop the others.</summary>
    private static Task ClassifyEachAsync(XRayClassifierClient client, IReadOnlyList<ImageInput> inputs, FileOutcome?[] outcomes, Action done,
        CancellationToken cancellationToken) =>
        Parallel.ForEachAsync(Enumerable.Range(0, inputs.Count), new ParallelOptions { MaxDegreeOfParallelism = FilesInFlight, CancellationToken = cancellationToken },
            async (i, ct) =>
            {
                if (inputs[i].Error is null)
                {
                    outcomes[i] = await ClassifyOneAsync(client, inputs[i].Path, ct);
                }
                done();
            });

    private static async Task<FileOutcome> ClassifyOneAsync(XRayClassifierClient client, string path, CancellationToken cancellationToken)
    {
        byte[] bytes;
        try
        {
            bytes = await File.ReadAllBytesAsync(path, cancellationToken);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return new FileOutcome(null, $"cannot read it: {ex.Message}", NotFound: true);
        }
        if (!ImageInput.LooksLikePngOrJpeg(bytes))
        {
            return new FileOutcome(null, "not a PNG or JPEG image", NotFound: false);
        }
        try
        {
            ClassifyResponse response = await client.ClassifyEncodedAsync([bytes], cancellationToken);
            return new FileOutcome(response, null, NotFound: false);
        }
        catch (RpcException ex) when (ex.StatusCode == StatusCode.Unavailable && !ToolCommandLine.SpeaksHttp1(ex))
        {
            // The server went away (or is draining) mid-run: the files answered so far are still printed.
            return new FileOutcome(null, $"the server was unavailable: {ex.Status.Detail}", NotFound: false, Unreachable: true);
        }
        catch (RpcException ex) when (ex.StatusCode is not (StatusCode.Unauthenticated or StatusCode.PermissionDenied or StatusCode.Cancelled)
                                      && !ToolCommandLine.SpeaksHttp1(ex))
        {
            // About this file (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED ...); refused credentials end the run.
            // One image per request: the server's "encoded.images[0]: " names nothing the user knows.
            string detail = ex.Status.Detail.StartsWith("encoded.images[0]: ", StringComparison.Ordinal) ? ex.Status.Detail["encoded.images[0]: ".Length..] : ex.Status.Detail;
            return new FileOutcome(null, $"the server refused it ({ex.StatusCode}): {detail}", NotFound: false);
        }
    }

    /// <summary>Results on stdout and errors on stderr, both named by path, in the order given; JSON puts both on stdout.</summary>
    private static int Report(IReadOnlyList<ImageInput> inputs, IReadOnlyList<FileOutcome?> outcomes, ModelInfo? model, bool asJson,
        TextWriter output, TextWriter error)
    {
        int failed = 0, notFound = 0, unreachable = 0;
        var array = new JsonArray();
        string? served = null;
        for (int i = 0; i < inputs.Count; i++)
        {
            FileOutcome outcome = inputs[i].Error is { } inputError
                ? new FileOutcome(null, inputError, NotFound: true)
                : outcomes[i] ?? new FileOutcome(null, "not classified", NotFound: false);
            string path = inputs[i].Path;
            if (outcome.Error is not null)
            {
                failed++;
                if (outcome.NotFound) notFound++;
                if (outcome.Unreachable) unreachable++;
                if (asJson) array.Add(new JsonObject { ["path"] = path, ["error"] = outcome.Error });
                else error.WriteLine($"error: {path}: {outcome.Error}");
                continue;
            }
            Prediction prediction = outcome.Response!.Predictions[0];
            served = $"{outcome.Response.ModelName} {outcome.Response.ModelVersion}";
            if (asJson)
            {
                array.Add(new JsonObject { ["path"] = path, ["result"] = ToJson(prediction, model!, served) });
                continue;
            }
            WriteTable(output, path, prediction, model!);
        }

        if (asJson) output.WriteLine(array.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        else if (served is not null)
        {
            output.WriteLine($"model {served}; * = at or above threshold");
            if (ClinicalNotice(model!.Description) is { } notice)
            {
                output.WriteLine(notice);
            }
        }
        if (failed > 0 && inputs.Count > 1) error.WriteLine($"{failed} of {inputs.Count} files failed");
        return failed == 0 ? ExitCodes.Ok
            : unreachable > 0 ? ExitCodes.Unreachable
            : notFound == failed && failed == inputs.Count ? ExitCodes.NotFound
            : ExitCodes.Refused;
    }

    private static void WriteTable(TextWriter output, string path, Prediction prediction, ModelInfo model)
    {
        string findings = prediction.Warnings.Count > 0 ? "findings withheld"
            : prediction.Findings.Count == 0 ? "none above threshold" : string.Join(", ", prediction.Findings.Select(f => f.Name));
        output.WriteLine($"{path}: {findings}");
        foreach (string warning in prediction.Warnings)
        {
            output.WriteLine($"  warning: {warning}");
        }
        output.WriteLine($"  {"finding",-20} {"probability",11} {"threshold",9}");
        foreach (int c in Enumerable.Range(0, model.ClassNames.Count).OrderByDescending(c => prediction.Probabilities[c]))
        {
            string mark = prediction.Warnings.Count == 0 && prediction.Probabilities[c] >= model.Thresholds[c] ? " *" : "";
            output.WriteLine($"  {model.ClassNames[c],-20} {prediction.Probabilities[c],11:F4} {model.Thresholds[c],9:F2}{mark}");
        }
        output.WriteLine($"  (batch of {prediction.Timing.BatchSize}, queued {prediction.Timing.QueueUs} us, compute {prediction.Timing.ComputeUs} us)");
    }

    /// <summary>
    /// A file's answer, or why it has none: <paramref name="NotFound"/> (missing or unreadable), <paramref name="Unreachable"/>
    /// (the server could not be reached for it), else refused.
    /// </summary>
    private sealed record FileOutcome(ClassifyResponse? Response, string? Error, bool NotFound, bool Unreachable = false);

    private static JsonObject ToJson(Prediction prediction, ModelInfo model, string served)
    {
        var probabilities = new JsonObject();
        for (int c = 0; c < model.ClassNames.Count; c++)
        {
            probabilities[model.ClassNames[c]] = prediction.Probabilities[c];
        }
        return new JsonObject
        {
            ["findings"] = new JsonArray(prediction.Findings.Select(f => (JsonNode)f.Name).ToArray()),
            ["warnings"] = new JsonArray(prediction.Warnings.Select(w => (JsonNode)w).ToArray()),
            ["probabilities"] = probabilities,
            ["batchSize"] = prediction.Timing.BatchSize,
            ["model"] = served,
        };
    }

    /// <summary>The description's sentences that say what the model is not for ("... not for clinical use ..."); null when it has none.</summary>
    internal static string? ClinicalNotice(string description)
    {
        string[] sentences = description.Split(". ", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        string[] notice = sentences.Where(s => s.Contains("clinical", StringComparison.OrdinalIgnoreCase)).Select(s => s.TrimEnd('.') + ".").ToArray();
        return notice.Length == 0 ? null : string.Join(" ", notice);
    }

    private static string Describe(ModelInfo model) => string.Join(Environment.NewLine,
    [
        $"model         {model.Name} {model.Version} ({model.Architecture}) on {model.Device}, {model.Precision}",
        $"classes       {string.Join(", ", model.ClassNames.Select((name, c) => $"{name}@{model.Thresholds[c]:F2}"))}",
        $"preprocessing resize {model.Preprocessing.ResizeSize}, crop {model.Preprocessing.CropSize}, {model.Preprocessing.Color}, mean [{string.Join(", ", model.Preprocessing.Mean)}], std [{string.Join(", ", model.Preprocessing.Std)}]",
        $"batching      max batch {model.Batching.MaxBatchSize}, max queue delay {model.Batching.MaxQueueDelayUs} us, queue {model.Batching.MaxQueueSize} images, {model.Batching.ModelInstances} instance(s)",
        $"description   {model.Description}",
    ]);
}
