using System.CommandLine;
using Spectre.Console;
using XRay.Model;
using XRay.Model.Checkpoints;
using XRay.Model.Onnx;
using XRay.Model.Training;

namespace XRay.Train;

/// <summary><c>import</c> and <c>export</c> (safetensors with PyTorch names), <c>export-onnx</c>, and <c>synth</c> (synthetic data set on disk).</summary>
internal static class ModelIoCommands
{
    public static Command Import(TextWriter output, TextWriter error)
    {
        var file = new Option<string>("--safetensors") { Description = "State dict as safetensors, torchvision names (e.g. from safetensors.torch.save_file(model.state_dict(), ...)).", Required = true };
        var manifestFile = new Option<string?>("--manifest") { Description = "A manifest.json to use as it is (else one is made from the options below)." };
        var arch = new Option<string>("--arch") { Description = "small_cnn, resnet18, resnet50 or densenet121.", DefaultValueFactory = _ => Architectures.DenseNet121 };
        var classes = new Option<string?>("--classes") { Description = "Comma-separated class names in output order (default: NIH's 14 findings)." };
        var strip = new Option<string?>("--strip-prefix") { Description = "Prefix to remove from every tensor name, e.g. 'module.' (DataParallel) or 'model.'." };
        var name = new Option<string>("--name") { Description = "Model name.", DefaultValueFactory = _ => "imported" };
        var version = new Option<string>("--model-version") { Description = "Model version.", DefaultValueFactory = _ => "1.0.0" };
        var description = new Option<string>("--description") { Description = "What it is and was trained on.", DefaultValueFactory = _ => "Imported from a PyTorch state dict." };
        var outDir = new Option<string>("--out") { Description = "Checkpoint folder to write (manifest.json + weights.bin).", Required = true };
        var command = new Command("import", "Make a checkpoint from a safetensors state dict with PyTorch/torchvision names; wrong shapes or missing tensors are refused.")
        {
            file, manifestFile, arch, classes, strip, name, version, description, outDir,
        };
        command.SetAction((result, _) => TrainApp.Guard(error, () =>
        {
            var manifest = result.GetValue(manifestFile) is { } path
                ? ModelManifest.FromJson(File.ReadAllText(path))
                : new ModelManifest
                {
                    Name = result.GetValue(name)!,
                    Version = result.GetValue(version)!,
                    Architecture = result.GetValue(arch)!,
                    ClassNames = result.GetValue(classes)?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                        ?? ChestXrayFindings.Nih14,
                    Description = TrainCommand.WithDisclaimer(result.GetValue(description)!),
                };
            using var model = SafetensorsWeights.Import(result.GetValue(file)!, manifest, result.GetValue(strip));
            Checkpoint.Save(result.GetValue(outDir)!, manifest, model.Network);
            TrainApp.Console(output).MarkupLine($"imported {Markup.Escape(manifest.Architecture)} ({manifest.ClassNames.Count} classes) to {Markup.Escape(result.GetValue(outDir)!)}");
            return Task.FromResult(0);
        }));
        return command;
    }

    public static Command ImportOnnx(TextWriter output, TextWriter error)
    {
        var backbone = new Option<string>("--onnx")
        {
            Description = "CNTK's ImageNet ResNet18.onnx (default: the copy from the Microsoft.ML.DnnImageFeaturizer.ResNet18 package beside this tool).",
            DefaultValueFactory = _ => CntkResNetImporter.BundledBackbone,
        };
        var meanImage = new Option<string?>("--mean-image-onnx") { Description = "ResNetPreprocess.onnx (default: beside --onnx)." };
        var gray = new Option<bool>("--gray") { Description = "Gray stem: conv1 summed over R, G, B; 1-channel input (resnet18_cntk_gray)." };
        var classes = new Option<string?>("--classes") { Description = "Comma-separated class names in output order (default: NIH's 14 findings)." };
        var seed = new Option<int>("--seed") { Description = "Seed of the new classification head.", DefaultValueFactory = _ => 1 };
        var name = new Option<string>("--name") { Description = "Model name.", DefaultValueFactory = _ => "resnet18-imagenet-cntk" };
        var outDir = new Option<string>("--out") { Description = "Checkpoint folder to write (manifest.json + weights.bin).", Required = true };
        var command = new Command("import-onnx", "Make a checkpoint from CNTK's ImageNet ResNet-18 (ONNX): backbone and mean image imported exactly, a new untrained head; a starting point for train --init.")
        {
            backbone, meanImage, gray, classes, seed, name, outDir,
        };
        command.SetAction((result, _) => TrainApp.Guard(error, () =>
        {
            var onnx = result.GetValue(backbone)!;
            var architecture = result.GetValue(gray) ? Architectures.ResNet18CntkGray : Architectures.ResNet18Cntk;
            var manifest = new ModelManifest
            {
                Name = result.GetValue(name)!,
                Version = "1.0.0",
                Architecture = architecture,
                ClassNames = result.GetValue(classes)?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                    ?? ChestXrayFindings.Nih14,
                Preprocessing = Architectures.DefaultPreprocessing(architecture),
                Description = TrainCommand.WithDisclaimer(
                    $"CNTK's ImageNet-pretrained ResNet-18 imported from {Path.GetFileName(onnx)}; the classification head is untrained."),
            };
            using var generator = new TorchSharp.torch.Generator((ulong)result.GetValue(seed));
            using var network = CntkResNetImporter.Create(
                onnx,
                result.GetValue(meanImage) ?? CntkResNetImporter.MeanImageBeside(onnx),
                result.GetValue(gray),
                manifest.ClassNames.Count,
                generator);
            Checkpoint.Save(result.GetValue(outDir)!, manifest, network);
            TrainApp.Console(output).MarkupLine($"imported {Markup.Escape(architecture)} from {Markup.Escape(onnx)} to {Markup.Escape(result.GetValue(outDir)!)}");
            return Task.FromResult(0);
        }));
        return command;
    }

    public static Command Export(TextWriter output, TextWriter error)
    {
        var model = new Option<string>("--model") { Description = "Checkpoint folder, or 'default' for the built-in model.", Required = true };
        var outDir = new Option<string>("--out") { Description = "Folder to write model.safetensors and manifest.json to.", Required = true };
        var command = new Command("export", "Write a checkpoint's weights as safetensors with PyTorch/torchvision names, beside its manifest.") { model, outDir };
        command.SetAction((result, _) => TrainApp.Guard(error, () =>
        {
            var path = result.GetValue(model)!;
            using var loaded = path == "default" ? DefaultModel.Create() : Checkpoint.Load(path);
            var directory = result.GetValue(outDir)!;
            Directory.CreateDirectory(directory);
            var target = Path.Combine(directory, "model" + SafetensorsWeights.FileExtension);
            SafetensorsWeights.Save(target, loaded.Network);
            File.WriteAllText(Path.Combine(directory, Checkpoint.ManifestFileName), loaded.Manifest.ToJson());
            TrainApp.Console(output).MarkupLine($"wrote {Markup.Escape(target)}");
            return Task.FromResult(0);
        }));
        return command;
    }

    public static Command ExportOnnx(TextWriter output, TextWriter error)
    {
        var model = new Option<string>("--model") { Description = "Checkpoint folder, or 'default' for the built-in model.", Required = true };
        var outFile = new Option<string>("--out") { Description = "ONNX file to write, e.g. model.onnx.", Required = true };
        var command = new Command(
            "export-onnx",
            $"Write a checkpoint as an ONNX graph (opset {OnnxExporter.Opset}): input '{OnnxExporter.InputName}' [batch, C, S, S] preprocessed as its manifest says, " +
            $"outputs '{OnnxExporter.LogitsName}' and '{OnnxExporter.ProbabilitiesName}' [batch, classes]; batch norms folded, the manifest in the metadata.")
        {
            model, outFile,
        };
        command.SetAction((result, _) => TrainApp.Guard(error, () =>
        {
            var path = result.GetValue(model)!;
            using var loaded = path == "default" ? DefaultModel.Create() : Checkpoint.Load(path);
            var target = result.GetValue(outFile)!;
            if (Path.GetDirectoryName(Path.GetFullPath(target)) is { } directory)
            {
                Directory.CreateDirectory(directory);
            }

            OnnxExporter.Export(loaded, target);
            var spec = loaded.Manifest.Preprocessing;
            TrainApp.Console(output).MarkupLine(
                $"wrote {Markup.Escape(target)}: {Markup.Escape(loaded.Manifest.Architecture)}, input [batch, {spec.Channels}, {spec.CropSize}, {spec.CropSize}], " +
                $"{loaded.Manifest.ClassNames.Count} classes");
            return Task.FromResult(0);
        }));
        return command;
    }

    public static Command Synth(TextWriter output, TextWriter error)
    {
        var outDir = new Option<string>("--out") { Description = "Folder for images/ and labels.csv.", Required = true };
        var count = new Option<int>("--count") { Description = "Images.", DefaultValueFactory = _ => 1000 };
        var size = new Option<int>("--size") { Description = "Pixels (square).", DefaultValueFactory = _ => 256 };
        var seed = new Option<int>("--seed") { Description = "Seed.", DefaultValueFactory = _ => 7 };
        var command = new Command("synth", $"Render synthetic chest X-rays with findings ({string.Join(", ", SyntheticChestXray.ClassNames)}) as PNG + labels.csv.")
        {
            outDir, count, size, seed,
        };
        command.SetAction((result, _) => TrainApp.Guard(error, () =>
        {
            var csv = new SyntheticChestXray(result.GetValue(seed)).WriteDataset(result.GetValue(outDir)!, result.GetValue(count), result.GetValue(size));
            TrainApp.Console(output).MarkupLine($"wrote {result.GetValue(count)} images and {Markup.Escape(csv)}");
            return Task.FromResult(0);
        }));
        return command;
    }
}
