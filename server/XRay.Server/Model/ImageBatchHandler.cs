using System.Buffers;
using System.Diagnostics;
using XRay.Batching;
using XRay.Server.Telemetry;

namespace XRay.Server.Model;

/// <summary>One normalised CHW image waiting for a batch, with the span of the request it belongs to.</summary>
/// <param name="Pixels">The image, already preprocessed; rented from <see cref="ImageBuffers"/> and given back once batched.</param>
/// <param name="Request">The request's span, which the batch span links to; default when not traced.</param>
public readonly record struct QueuedImage(float[] Pixels, ActivityContext Request);

/// <summary>
/// Runs one batch of normalised images and splits the logits back per image. Each image is copied once, into its row
/// of a pooled batch buffer that the runtime reads in place; the image's own buffer goes back to the pool.
/// </summary>
internal sealed class ImageBatchHandler(IModelBackend backend, ImageBuffers buffers) : IBatchHandler<QueuedImage, float[]>
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
        int imageLength = buffers.ImageLength;
        int classes = backend.Manifest.ClassNames.Count;
        float[] input = buffers.RentBatch();
        float[] logits = ArrayPool<float>.Shared.Rent(batch.Count * classes);
        try
        {
            for (int i = 0; i < batch.Count; i++)
            {
                float[] pixels = batch[i].Pixels;
                pixels.AsSpan(0, imageLength).CopyTo(input.AsSpan(i * imageLength, imageLength));
                buffers.ReturnImage(pixels);
            }

            await backend.RunAsync(input, batch.Count, logits, cancellationToken).ConfigureAwait(false);
            var rows = new float[batch.Count][];
            for (int i = 0; i < batch.Count; i++)
            {
                rows[i] = logits.AsSpan(i * classes, classes).ToArray();
            }
            return rows;
        }
        finally
        {
            ArrayPool<float>.Shared.Return(logits);
            buffers.ReturnBatch(input);
        }
    }
}
