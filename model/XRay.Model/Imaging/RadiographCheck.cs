using System.Globalization;

namespace XRay.Model;

/// <summary>What decoding saw of an encoded image before resizing: its stored size and how much of it is in colour.</summary>
/// <param name="Width">Stored width in pixels (before EXIF orientation).</param>
/// <param name="Height">Stored height in pixels.</param>
/// <param name="ColourFraction">Share of pixels whose red, green and blue differ by more than <see cref="RadiographCheck.ChannelTolerance"/>; 0 for gray images.</param>
public readonly record struct ImageFacts(int Width, int Height, double ColourFraction);

/// <summary>
/// A cheap check that an encoded image could be a chest radiograph, from what decoding saw anyway (no extra pass over the
/// pixels, no model): radiographs are gray, at least a few hundred pixels on a side, and roughly square (films are 14 x 17
/// inches or so). An image that fails gets warnings in its answer and no findings: the model was never shown colour
/// photos, thumbnails or banners, and its probabilities for them mean nothing. Raw tensors are not checked (the caller
/// prepared them). It cannot tell a gray photo of something else from a radiograph.
/// </summary>
public static class RadiographCheck
{
    /// <summary>A pixel is coloured when its channels differ by more than this (of 255): JPEG chroma noise on gray images stays well below.</summary>
    public const int ChannelTolerance = 24;

    /// <summary>More than this share of coloured pixels: a colour image.</summary>
    public const double MaxColourFraction = 0.01;

    /// <summary>Shorter side below this many pixels: too small to be a radiograph (the model's input is 224).</summary>
    public const int MinShorterSide = 128;

    /// <summary>Longer side over shorter side above this: not a chest film's shape.</summary>
    public const double MaxAspectRatio = 2.0;

    /// <summary>The warnings for an image with these facts; empty when it passes.</summary>
    public static IReadOnlyList<string> Warnings(ImageFacts facts)
    {
        var warnings = new List<string>(0);
        if (facts.ColourFraction > MaxColourFraction)
        {
            warnings.Add(string.Create(CultureInfo.InvariantCulture,
                $"not a chest radiograph: a colour image ({facts.ColourFraction:P0} of pixels coloured); findings withheld"));
        }

        var shorter = Math.Min(facts.Width, facts.Height);
        var longer = Math.Max(facts.Width, facts.Height);
        if (shorter < MinShorterSide)
        {
            warnings.Add(string.Create(CultureInfo.InvariantCulture,
                $"not a chest radiograph: {facts.Width} x {facts.Height} pixels is below the {MinShorterSide} px minimum side; findings withheld"));
        }

        if (shorter > 0 && (double)longer / shorter > MaxAspectRatio)
        {
            warnings.Add(string.Create(CultureInfo.InvariantCulture,
                $"not a chest radiograph: aspect ratio {(double)longer / shorter:F1}:1 (at most {MaxAspectRatio:F0}:1); findings withheld"));
        }

        return warnings;
    }
}
