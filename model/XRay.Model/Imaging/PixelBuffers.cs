using System.Buffers;

namespace XRay.Model.Imaging;

/// <summary>
/// Buffers for whole decoded images. Up to <see cref="LargeLength"/> elements they come from
/// <see cref="ArrayPool{T}.Shared"/>; larger ones are allocated and left to the garbage collector. The shared pool
/// keeps arrays of each size class per thread and per core, so a burst of radiograph-sized decodes (a 15 Mpx film
/// needs a 64 MB float plane) would stay resident long after the burst; these are few and costly to decode anyway.
/// </summary>
internal static class PixelBuffers
{
    /// <summary>1 Mi elements: a 1024 x 1024 plane.</summary>
    public const int LargeLength = 1 << 20;

    public static T[] Rent<T>(int length) =>
        length > LargeLength ? GC.AllocateUninitializedArray<T>(length) : ArrayPool<T>.Shared.Rent(length);

    /// <summary>Returns a buffer from <see cref="Rent{T}"/>: pooled ones to the pool; large ones are just dropped.</summary>
    public static void Return<T>(T[] array)
    {
        // Pooled arrays are never longer than LargeLength: the pool rounds up to a power of two, and LargeLength is one.
        if (array.Length <= LargeLength)
        {
            ArrayPool<T>.Shared.Return(array);
        }
    }
}
