using XRay.Batching;

namespace XRay.Server.Model;

/// <summary>Runs one batch of normalised images (one CHW array each) and splits the logits back per image.</summary>
internal sealed class ImageBatchHandler(IModelBackend backend) : IBatchHandler<float[], float[]>
{
    public async Task<IReadOnlyList<float[]>> ExecuteAsync(IReadOnlyList<float[]> batch, CancellationToken cancellationToken)
    {
        int imageLength = batch[0].Length;
        var input = new float[batch.Count * imageLength];
        for (int i = 0; i < batch.Count; i++)
        {
            batch[i].CopyTo(input, i * imageLength);
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
