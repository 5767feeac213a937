using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using XRay.Client;
using XRay.Contracts.V1;

namespace XRay.Cli;

/// <summary>The <c>xray</c> command line: classify image files, show the model, check health.</summary>
internal static class CliApp
{
    public const string DefaultServer = "http://127.0.0.1:5051";
    public const string DefaultAdmin = "http://127.0.0.1:5052";

    public static Task<int> RunAsync(string[] args, TextWriter output, TextWriter error)
    {
        var server = new Option<string>("--server", "-s")
        {
            Description = "Server address (http://host:port); several, comma-separated, are called round-robin.",
            DefaultValueFactory = _ => Environment.GetEnvironmentVariable("XRAY_SERVER") ?? DefaultServer,
            Recursive = true,
        };
        var timeout = new Option<double>("--timeout")
        {
            Description = "Deadline of each call, in seconds.",
            DefaultValueFactory = _ => 30,
            Recursive = true,
        };
        var json = new Option<bool>("--json") { Description = "Print JSON instead of a table.", Recursive = true };
        var credentials = new CredentialOptions();

        var files = new Argument<FileInfo[]>("files") { Description = "PNG or JPEG chest X-rays.", Arity = ArgumentArity.OneOrMore };
        var classify = new Command("classify", "Classify image files (PNG or JPEG) and print the findings.") { files };
        classify.SetAction((result, ct) => Run(result, server, timeout, credentials, error, client =>
            ClassifyAsync(client, result.GetValue(files)!, result.GetValue(json), output, error, ct)));

        var info = new Command("info", "Show the served model: classes, thresholds, inputs, batching.");
        info.SetAction((result, ct) => Run(result, server, timeout, credentials, error, async client =>
        {
            ModelInfo model = await client.GetModelInfoAsync(ct);
            output.WriteLine(result.GetValue(json) ? JsonFormatter.Default.Format(model) : Describe(model));
            return 0;
        }));

        var health = new Command("health", "Check the server's gRPC health (exit 0 when SERVING).");
        health.SetAction((result, ct) => Run(result, server, timeout, credentials, error, async client =>
        {
            var status = await client.CheckHealthAsync(cancellationToken: ct);
            output.WriteLine(status.ToString().ToUpperInvariant());
            return status == Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus.Serving ? 0 : 1;
        }));

        var admin = new Option<string>("--admin")
        {
            Description = "The server's Admin endpoint (Kestrel:Endpoints:Admin, e.g. http://127.0.0.1:5052).",
            DefaultValueFactory = _ => Environment.GetEnvironmentVariable("XRAY_ADMIN") ?? DefaultAdmin,
        };
        var checkpoint = new Argument<string>("checkpoint") { Description = "Checkpoint folder as the server sees it; \"\" for the built-in default model." };
        var loadModel = new Command("load-model", "Load a checkpoint on the server and serve it in place of the current model, without dropping a request.")
        {
            checkpoint, admin,
        };
        loadModel.SetAction((result, ct) => LoadModelAsync(result.GetValue(admin)!, result.GetValue(checkpoint)!,
            TimeSpan.FromSeconds(Math.Max(result.GetValue(timeout), 300)), output, error, ct));

        var root = new RootCommand("XRay Serving client: multi-label chest X-ray classification over gRPC.")
        {
            server, timeout, json, classify, info, health, loadModel,
        };
        foreach (Option option in credentials.All)
        {
            root.Options.Add(option);
        }
        var configuration = new InvocationConfiguration { Output = output, Error = error };
        return root.Parse(args).InvokeAsync(configuration);
    }

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
        catch (RpcException ex) when (ex.StatusCode is StatusCode.Unauthenticated or StatusCode.PermissionDenied)
        {
            error.WriteLine($"error: the server refused the credentials ({ex.StatusCode}): {ex.Status.Detail}");
            return 5;
        }
        catch (RpcException ex) when (ex.StatusCode == StatusCode.Unavailable)
        {
            error.WriteLine($"error: cannot reach an XRay server at {address}: {ex.Status.Detail}");
            return 3;
        }
        catch (RpcException ex)
        {
            error.WriteLine($"error: the server answered {ex.StatusCode}: {ex.Status.Detail}");
            return 4;
        }
        catch (Exception ex) when (ex is UriFormatException or ArgumentException)
        {
            error.WriteLine($"error: '{address}' is not a server address ({ex.Message}); use http://host:port");
            return 2;
        }
        catch (FileNotFoundException ex)
        {
            error.WriteLine($"error: {ex.Message}");
            return 2;
        }
        catch (System.Security.Cryptography.CryptographicException ex)
        {
            error.WriteLine($"error: cannot read the certificate or key: {ex.Message}");
            return 2;
        }
    }

    /// <summary>ModelAdmin.LoadModel; loading and warming up a large model takes a while, so the deadline is at least 5 minutes.</summary>
    private static async Task<int> LoadModelAsync(string address, string path, TimeSpan timeout, TextWriter output, TextWriter error,
        CancellationToken cancellationToken)
    {
        try
        {
            using var channel = GrpcChannel.ForAddress(address);
            var admin = new ModelAdmin.ModelAdminClient(channel);
            LoadModelResponse response = await admin.LoadModelAsync(new LoadModelRequest { Path = path },
                deadline: DateTime.UtcNow + timeout, cancellationToken: cancellationToken);
            output.WriteLine($"serving {response.Model.Name} {response.Model.Version} (was {response.PreviousName} {response.PreviousVersion}); " +
                             $"loaded and warmed up in {response.LoadSeconds:F1} s");
            return 0;
        }
        catch (RpcException ex) when (ex.StatusCode == StatusCode.Unavailable)
        {
            error.WriteLine($"error: cannot reach the Admin endpoint at {address}: {ex.Status.Detail}");
            return 3;
        }
        catch (RpcException ex)
        {
            error.WriteLine($"error: the model was not loaded ({ex.StatusCode}): {ex.Status.Detail}");
            return 4;
        }
        catch (UriFormatException ex)
        {
            error.WriteLine($"error: '{address}' is not an address ({ex.Message}); use http://host:port");
            return 2;
        }
    }

    private static async Task<int> ClassifyAsync(XRayClassifierClient client, FileInfo[] files, bool asJson,
        TextWriter output, TextWriter error, CancellationToken cancellationToken)
    {
        FileInfo? missing = files.FirstOrDefault(file => !file.Exists);
        if (missing is not null)
        {
            error.WriteLine($"error: no such file: {missing.FullName}");
            return 2;
        }

        ModelInfo model = await client.GetModelInfoAsync(cancellationToken);
        ClassifyResponse response = await client.ClassifyFilesAsync(files.Select(file => file.FullName), cancellationToken);
        if (asJson)
        {
            var array = new JsonArray();
            for (int i = 0; i < files.Length; i++)
            {
                array.Add(ToJson(files[i].Name, response.Predictions[i], model));
            }
            output.WriteLine(array.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }

        for (int i = 0; i < files.Length; i++)
        {
            Prediction prediction = response.Predictions[i];
            string findings = prediction.Warnings.Count > 0 ? "findings withheld"
                : prediction.Findings.Count == 0 ? "none above threshold" : string.Join(", ", prediction.Findings.Select(f => f.Name));
            output.WriteLine($"{files[i].Name}: {findings}");
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
        output.WriteLine($"model {response.ModelName} {response.ModelVersion}; * = at or above threshold");
        if (ClinicalNotice(model.Description) is { } notice)
        {
            output.WriteLine(notice);
        }
        return 0;
    }

    private static JsonObject ToJson(string file, Prediction prediction, ModelInfo model)
    {
        var probabilities = new JsonObject();
        for (int c = 0; c < model.ClassNames.Count; c++)
        {
            probabilities[model.ClassNames[c]] = prediction.Probabilities[c];
        }
        return new JsonObject
        {
            ["file"] = file,
            ["findings"] = new JsonArray(prediction.Findings.Select(f => (JsonNode)f.Name).ToArray()),
            ["warnings"] = new JsonArray(prediction.Warnings.Select(w => (JsonNode)w).ToArray()),
            ["probabilities"] = probabilities,
            ["batchSize"] = prediction.Timing.BatchSize,
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
