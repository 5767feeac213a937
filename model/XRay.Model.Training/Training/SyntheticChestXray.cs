using System.Globalization;
using System.Text;
using SkiaSharp;

namespace XRay.Model.Training;

/// <summary>
/// Seeded synthetic frontal chest radiographs: a bright soft-tissue torso, two dark lung fields with vessel-like
/// texture and rib shadows, spine and heart; each finding of <see cref="ClassNames"/> is drawn as a visible,
/// localised pattern, several at once, with multi-hot labels. For tests of the training pipeline and demos: they
/// look like a chest X-ray to a CNN at the scale of what it must detect, not to a radiologist.
/// <list type="bullet">
/// <item><c>Cardiomegaly</c>: the heart silhouette wider than half the thorax (cardiothoracic ratio ~0.6 vs ~0.42).</item>
/// <item><c>Effusion</c>: a homogeneous basal opacity with a concave meniscus in one or both lungs.</item>
/// <item><c>Mass</c>: a large lobulated opacity (radius ~8% of the image) in a lung.</item>
/// <item><c>Nodule</c>: two to four small round opacities (radius ~3.5%) in the lungs.</item>
/// <item><c>Pneumothorax</c>: a dark rim without lung markings along the apex and lateral edge of one lung, with a thin pleural line.</item>
/// </list>
/// Image <c>i</c> depends only on (seed, i): any range of indices can be rendered, in any order, on any thread.
/// </summary>
public sealed class SyntheticChestXray
{
    /// <summary>The findings drawn, named and ordered as in NIH ChestX-ray14, so a model can be fine-tuned across.</summary>
    public static IReadOnlyList<string> ClassNames { get; } = Array.AsReadOnly(["Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax"]);

    private const int Cardiomegaly = 0, Effusion = 1, Mass = 2, Nodule = 3, Pneumothorax = 4;

    /// <param name="seed">Selects the whole (infinite) sequence of images.</param>
    /// <param name="prevalence">Probability that each finding is present, independently per image. Default 0.3.</param>
    public SyntheticChestXray(int seed, double prevalence = 0.3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(prevalence, 0.0);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(prevalence, 1.0);
        Seed = seed;
        Prevalence = prevalence;
    }

    public int Seed { get; }

    public double Prevalence { get; }

    /// <summary>Renders image <paramref name="index"/>: <c>size x size</c> 8-bit grayscale, row-major, and its labels (0/1 per class).</summary>
    public (byte[] Pixels, float[] Labels) Render(int index, int size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 16);
        var random = new Random(unchecked((int)((Seed * 1_000_003L) ^ (index * 2_654_435_761L))));
        var labels = new float[ClassNames.Count];
        for (var c = 0; c < labels.Length; c++)
        {
            labels[c] = random.NextDouble() < Prevalence ? 1f : 0f;
        }

        var scene = new Scene(random, labels);
        var pixels = new byte[size * size];
        var noise = new Random(random.Next());
        for (var py = 0; py < size; py++)
        {
            for (var px = 0; px < size; px++)
            {
                var v = scene.Intensity((px + 0.5) / size, (py + 0.5) / size);
                v = (v - 0.5) * scene.Contrast + 0.5 + scene.Brightness + Gaussian(noise) * 0.015;
                pixels[py * size + px] = (byte)Math.Clamp(Math.Round(v * 255), 0, 255);
            }
        }

        return (pixels, labels);
    }

    /// <summary>
    /// Writes images <c>0..count-1</c> as PNG files to <c>directory/images/</c> and a generic label file
    /// <c>directory/labels.csv</c> (<c>path,patient,&lt;classes&gt;</c>; one patient per image) that
    /// <see cref="LabelCsvFile"/> reads. Returns the label file's path.
    /// </summary>
    public string WriteDataset(string directory, int count, int size)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        var imageDirectory = Path.Combine(directory, "images");
        Directory.CreateDirectory(imageDirectory);
        var rows = new string[count];
        Parallel.For(0, count, i =>
        {
            var (pixels, labels) = Render(i, size);
            var name = $"synthetic_{i:D6}.png";
            File.WriteAllBytes(Path.Combine(imageDirectory, name), EncodePng(pixels, size));
            rows[i] = $"images/{name},synthetic_{i:D6}," +
                string.Join(",", labels.Select(l => l.ToString(CultureInfo.InvariantCulture)));
        });

        var csv = new StringBuilder();
        csv.Append("path,patient,").AppendJoin(',', ClassNames).Append('\n');
        foreach (var row in rows)
        {
            csv.Append(row).Append('\n');
        }

        var labelPath = Path.Combine(directory, "labels.csv");
        File.WriteAllText(labelPath, csv.ToString());
        return labelPath;
    }

    /// <summary>8-bit grayscale PNG of a row-major <c>size x size</c> image.</summary>
    public static byte[] EncodePng(byte[] pixels, int size)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(size, size, SKColorType.Gray8, SKAlphaType.Opaque));
        System.Runtime.InteropServices.Marshal.Copy(pixels, 0, bitmap.GetPixels(), pixels.Length);
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }

    private static double Gaussian(Random random)
    {
        // Box-Muller.
        var u = 1.0 - random.NextDouble();
        var v = random.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v);
    }

    /// <summary>
    /// A membership in [0, 1] for an ellipse with a soft edge: 1 inside, 0 outside, linear over
    /// <paramref name="edge"/> (in units of the radius) around the boundary.
    /// </summary>
    private static double Ellipse(double x, double y, double cx, double cy, double rx, double ry, double edge = 0.08)
    {
        var dx = (x - cx) / rx;
        var dy = (y - cy) / ry;
        var d = Math.Sqrt(dx * dx + dy * dy);
        return Math.Clamp((1 - d) / edge + 0.5, 0, 1);
    }

    private static double Lerp(double a, double b, double t) => a + (b - a) * t;

    /// <summary>One patient's anatomy and findings, in image coordinates in [0, 1] (x right, y down).</summary>
    private sealed class Scene
    {
        private readonly double _shiftX, _shiftY, _torsoRx, _lungRx, _lungRy, _lungCy, _lungGap, _lungLevel;
        private readonly double _heartRx, _heartRy, _heartCx, _heartCy;
        private readonly double _ribPeriod, _ribPhase;
        private readonly (double Fx, double Fy, double Phase, double Amplitude)[] _texture;
        private readonly List<(double Cx, double Cy, double R, double Gain, double Lobes, double LobePhase)> _opacities = [];
        private readonly bool[] _effusionSide = new bool[2];
        private readonly double[] _effusionHeight = new double[2];
        private readonly int _pneumothoraxSide = -1;
        private readonly double _pneumothoraxDepth;

        public Scene(Random random, float[] labels)
        {
            double U(double a, double b) => a + (b - a) * random.NextDouble();
            _shiftX = U(-0.03, 0.03);
            _shiftY = U(-0.03, 0.03);
            _torsoRx = U(0.40, 0.46);
            _lungRx = U(0.13, 0.155);
            _lungRy = U(0.25, 0.29);
            _lungCy = U(0.44, 0.48);
            _lungGap = U(0.17, 0.2);
            _lungLevel = U(0.12, 0.2);
            var thorax = 2 * (_lungGap + _lungRx);
            var ratio = labels[Cardiomegaly] > 0 ? U(0.56, 0.66) : U(0.36, 0.46);
            _heartRx = ratio * thorax / 2;
            _heartRy = U(0.11, 0.14);
            _heartCx = 0.5 + U(0.01, 0.04);
            _heartCy = _lungCy + _lungRy - _heartRy * 0.75;
            _ribPeriod = U(0.06, 0.08);
            _ribPhase = U(0, 1);
            _texture = Enumerable.Range(0, 6)
                .Select(_ => (U(6, 22), U(6, 22), U(0, 2 * Math.PI), U(0.01, 0.025)))
                .ToArray();
            Contrast = U(0.85, 1.15);
            Brightness = U(-0.06, 0.06);

            (double X, double Y) InLung()
            {
                var side = random.Next(2);
                var angle = U(0, 2 * Math.PI);
                var radius = Math.Sqrt(U(0, 1)) * 0.6;
                return (LungCx(side) + Math.Cos(angle) * radius * _lungRx, _lungCy + _shiftY - 0.05 + Math.Sin(angle) * radius * _lungRy * 0.75);
            }

            if (labels[Nodule] > 0)
            {
                var count = random.Next(2, 5);
                for (var i = 0; i < count; i++)
                {
                    var (x, y) = InLung();
                    _opacities.Add((x, y, U(0.03, 0.042), U(0.3, 0.4), 0, 0));
                }
            }

            if (labels[Mass] > 0)
            {
                var (x, y) = InLung();
                _opacities.Add((x, y, U(0.07, 0.095), U(0.25, 0.35), random.Next(3, 6), U(0, 2 * Math.PI)));
            }

            if (labels[Effusion] > 0)
            {
                var sides = random.Next(3); // 0 left, 1 right, 2 both
                for (var s = 0; s < 2; s++)
                {
                    _effusionSide[s] = sides == 2 || sides == s;
                    _effusionHeight[s] = U(0.1, 0.2);
                }
            }

            if (labels[Pneumothorax] > 0)
            {
                _pneumothoraxSide = random.Next(2);
                _pneumothoraxDepth = U(0.28, 0.4);
            }
        }

        public double Contrast { get; }

        public double Brightness { get; }

        private double LungCx(int side) => 0.5 + _shiftX + (side == 0 ? -_lungGap : _lungGap);

        public double Intensity(double x, double y)
        {
            var cy = _lungCy + _shiftY;
            var v = 0.04;
            v = Lerp(v, 0.42, Ellipse(x, y, 0.5 + _shiftX, 0.58 + _shiftY, _torsoRx, 0.56, 0.05));

            var markings = 0.0;
            foreach (var (fx, fy, phase, amplitude) in _texture)
            {
                markings += amplitude * Math.Sin(fx * x + fy * y + phase);
            }

            for (var side = 0; side < 2; side++)
            {
                var lcx = LungCx(side);
                var lung = Ellipse(x, y, lcx, cy, _lungRx, _lungRy, 0.12);
                // The diaphragm domes flatten the lung bases.
                lung *= Math.Clamp((cy + _lungRy * 0.8 - y) / 0.03 + 0.5, 0, 1);
                if (lung <= 0)
                {
                    continue;
                }

                var air = _lungLevel + markings;
                if (_effusionSide[side])
                {
                    // Fluid level with a meniscus: higher laterally than medially.
                    var lateral = side == 0 ? (lcx - x) / _lungRx : (x - lcx) / _lungRx;
                    var top = cy + _lungRy * 0.8 - _effusionHeight[side] - 0.05 * Math.Max(0, lateral);
                    air = Lerp(air, 0.52, Math.Clamp((y - top) / 0.02, 0, 1));
                }

                if (side == _pneumothoraxSide)
                {
                    // Collapsed lung edge: between it and the chest wall only air, darker and without markings.
                    var dx = (x - lcx) / _lungRx;
                    var dy = (y - cy) / _lungRy;
                    var d = Math.Sqrt(dx * dx + dy * dy);
                    var upperLateral = y < cy + _lungRy * 0.3 && (side == 0 ? x < lcx + 0.3 * _lungRx : x > lcx - 0.3 * _lungRx);
                    var rim = 1 - _pneumothoraxDepth;
                    if (upperLateral && d > rim)
                    {
                        air = 0.03;
                    }
                    else if (upperLateral && d > rim - 0.04)
                    {
                        air += 0.18; // the visceral pleural line
                    }
                }

                v = Lerp(v, air, lung);
                var rib = Math.Max(0, Math.Cos(2 * Math.PI * ((y - 0.6 * (x - lcx) * (x - lcx)) / _ribPeriod + _ribPhase)));
                v += 0.07 * Math.Pow(rib, 4) * lung;
            }

            v = Lerp(v, 0.62, Ellipse(x, y, 0.5 + _shiftX, cy, 0.035, 0.5, 0.3)); // spine and mediastinum
            v = Lerp(v, 0.6, Ellipse(x, y, _heartCx + _shiftX, _heartCy + _shiftY, _heartRx, _heartRy, 0.1));

            // Opacities add density on top of whatever lies behind them, so they stay visible over the heart.
            foreach (var (ocx, ocy, r, gain, lobes, lobePhase) in _opacities)
            {
                var dx = x - ocx;
                var dy = y - ocy;
                var radius = r;
                if (lobes > 0)
                {
                    radius *= 1 + 0.18 * Math.Sin(lobes * Math.Atan2(dy, dx) + lobePhase);
                }

                var d = Math.Sqrt(dx * dx + dy * dy) / radius;
                v += gain * Math.Clamp((1 - d) / 0.25, 0, 1);
            }

            return v;
        }
    }
}
