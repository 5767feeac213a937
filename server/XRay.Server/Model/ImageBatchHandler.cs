using System.Diagnostics;
using XRay.Batching;
using XRay.Server.Telemetry;

namespace XRay.Server.Model;

/// <summary>One normalised CHW image waiting for a batch, with the span of the request it belongs to.</summary>
/// <param name="Pixels">The image, already preprocessed.</param>
/// <param name="Request">The request's span, which the batch span links to; default when not traced.</param>
public readonly record struct QueuedImage(float[] Pixels, ActivityContext Request);

/// <summary>Runs one batch of normalised images (one CHW array each) and splits the logits back per image.</summary>
internal sealed class ImageBatchHandler(IModelBackend backend) : IBatchHandler<QueuedImage, float[]>
{
    public async Task<IReadOnlyList<float[]>> ExecuteAsync(IReadOnlyList<QueuedImage> batch, CancellationToken cancellationToken)
    {
        using Activity? activity = XRayTracing.StartBatch(batch.Count, batch.Select(image => image.Request));
        try
        {
            return await RunAsync(batch, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            activity?.SetStatus(ActivityStatusCode.Error, ex.GetType().FullName);
            activity?.SetTag(XRayMetrics.ErrorTypeTag, ex.GetType().FullName);
            throw;
        }
    }

    private async Task<IReadOnlyList<float[]>> RunAsync(IReadOnlyList<QueuedImage> batch, CancellationToken cancellationToken)
    {
        int imageLength = batch[0].Pixels.Length;
        var input = new float[batch.Count * imageLength];
        for (int i = 0; i < batch.Count; i++)
        {
            batch[i].Pixels.CopyTo(input, i * imageLength);
        }

        float[] logits = await backend.RunAsync(input, batch.Count, cancellationToken).ConfigureAwait(false);
        if (logits.Length % batch.Count != 0)
        {
            throw new InvalidOperationException($"The model returned {logits.Length} logits for a batch of {batch.Count} images.");
        }

        int classes = logits.Length / batch.Count;
        var rows = new float[batch.Count][];
        for (int i = 0; i < batch.Count; i++)
        {
            rows[i] = logits.AsSpan(i * classes, classes).ToArray();
        }
        return rows;
    }
}
