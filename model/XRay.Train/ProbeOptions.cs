using System.CommandLine;
using XRay.Model.Training;

namespace XRay.Train;

/// <summary>How a linear-probe recipe is run: on cached backbone features (the default), with several seeds averaged.</summary>
internal sealed record ProbeSettings(bool Enabled, IReadOnlyList<int> Seeds, int Views, FeatureCache? Cache);

/// <summary>The command-line options of <see cref="ProbeSettings"/>, shared by <c>train</c> and <c>crossval</c>.</summary>
internal sealed class ProbeOptionSet
{
    private readonly Option<int> _seeds = new("--seeds")
    {
        Description = "Linear probe: train this many heads (seeds --seed, --seed+1, ...) and average them into one head (free at inference).",
        DefaultValueFactory = _ => 1,
    };

    private readonly Option<int> _views = new("--views")
    {
        Description = "Linear probe with augmentation: augmented views of each image computed once through the backbone; epoch e trains on view (e-1) mod views.",
        DefaultValueFactory = _ => 10,
    };

    private readonly Option<string> _cache = new("--feature-cache")
    {
        Description = "Linear probe: folder caching backbone features by a hash of backbone, images, preprocessing and augmentation ('none': no cache).",
        DefaultValueFactory = _ => Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "xray-train", "features"),
    };

    private readonly Option<bool> _fullNetwork = new("--full-network")
    {
        Description = "Linear probe: run the whole network every epoch as for fine-tuning, instead of training on cached features.",
    };

    public void AddTo(Command command)
    {
        foreach (var option in new Option[] { _seeds, _views, _cache, _fullNetwork })
        {
            command.Options.Add(option);
        }
    }

    public ProbeSettings From(ParseResult result, TrainingOptions options)
    {
        var seeds = result.GetValue(_seeds);
        var views = result.GetValue(_views);
        if (seeds < 1)
        {
            throw new ArgumentException($"--seeds must be at least 1; got {seeds}.");
        }

        if (views < 1)
        {
            throw new ArgumentException($"--views must be at least 1; got {views}.");
        }

        var enabled = LinearProbe.IsProbe(options) && !result.GetValue(_fullNetwork) && options.Architecture is
            XRay.Model.Architectures.ResNet18 or XRay.Model.Architectures.ResNet50 or XRay.Model.Architectures.ResNet18Cntk or XRay.Model.Architectures.ResNet18CntkGray;
        if (seeds > 1 && !enabled)
        {
            throw new ArgumentException("--seeds averages linear-probe heads: it needs a linear probe of a ResNet (--init and --frozen-epochs = --epochs) on cached features.");
        }

        var cache = result.GetValue(_cache);
        return new ProbeSettings(
            enabled,
            Enumerable.Range(options.Seed, seeds).ToArray(),
            options.Augmentation.Enabled ? views : 1,
            string.IsNullOrEmpty(cache) || cache == "none" ? null : new FeatureCache(cache));
    }
}
