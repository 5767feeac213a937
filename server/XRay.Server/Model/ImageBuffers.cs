using Microsoft.Extensions.ObjectPool;

namespace XRay.Server.Model;

/// <summary>
/// Reused float buffers on the way from a request to the model, so that serving an image allocates no large array:
/// one per decoded image (exactly one preprocessed image long) and one per running batch (MaxBatchSize images, pinned,
/// so that ONNX Runtime reads it in place). Buffers not given back (a request refused or cancelled while queued) are
/// simply collected.
/// </summary>
public sealed class ImageBuffers
{
    private readonly ObjectPool<float[]> _images;
    private readonly ObjectPool<float[]> _batches;

    /// <param name="imageLength">Floats per preprocessed image.</param>
    /// <param name="maxBatchSize">Images per batch, at most.</param>
    /// <param name="modelInstances">Batches that may run at once.</param>
    public ImageBuffers(int imageLength, int maxBatchSize, int modelInstances)
    {
        ImageLength = imageLength;
        // Enough images for the batches in flight and the next ones forming; more are allocated and dropped.
        _images = new DefaultObjectPoolProvider { MaximumRetained = 2 * maxBatchSize * modelInstances }
            .Create(new ArrayPolicy(imageLength, pinned: false));
        _batches = new DefaultObjectPoolProvider { MaximumRetained = modelInstances }
            .Create(new ArrayPolicy(imageLength * maxBatchSize, pinned: true));
    }

    public int ImageLength { get; }

    /// <summary>A buffer of exactly <see cref="ImageLength"/> floats, contents undefined.</summary>
    public float[] RentImage() => _images.Get();

    public void ReturnImage(float[] image) => _images.Return(image);

    /// <summary>A pinned buffer for MaxBatchSize images, contents undefined.</summary>
    public float[] RentBatch() => _batches.Get();

    public void ReturnBatch(float[] batch) => _batches.Return(batch);

    private sealed class ArrayPolicy(int length, bool pinned) : IPooledObjectPolicy<float[]>
    {
        public float[] Create() => GC.AllocateUninitializedArray<float>(length, pinned);

        public bool Return(float[] array) => array.Length == length;
    }
}
