using System.Runtime.InteropServices;
using XRay.Contracts.V1;
using XRay.Model;
using XRay.Server.Model;

namespace XRay.Server.Grpc;

/// <summary>A request the server cannot classify; the message says exactly what is wrong.</summary>
public sealed class InvalidRequestException(string message) : Exception(message);

/// <summary>
/// Turns a <see cref="ClassifyRequest"/> into normalised CHW images, one array per image, rented from
/// <paramref name="buffers"/> when given (they go back once batched) or else allocated.
/// </summary>
internal static class RequestDecoder
{
    /// <summary>
    /// How many images the request holds, from its fields alone (no pixel is read): the room it needs in the queue,
    /// taken before decoding. A malformed tensor counts as 1; <see cref="DecodeAsync"/> then says what is wrong.
    /// </summary>
    public static int CountImages(ClassifyRequest request, int maxImages)
    {
        long count = request.InputCase switch
        {
            ClassifyRequest.InputOneofCase.Tensor => request.Tensor.Shape.Count == 4 ? Math.Max(1, request.Tensor.Shape[0]) : 1,
            ClassifyRequest.InputOneofCase.Encoded => request.Encoded.Images.Count,
            _ => throw NoInput(),
        };
        if (count == 0)
        {
            throw EmptyEncoded();
        }
        CheckCount(count, maxImages);
        return (int)count;
    }

    /// <summary>
    /// Decodes every image; encoded ones one at a time, each on the <paramref name="pool"/>. <c>Warnings</c> holds, per
    /// image, what <see cref="RadiographCheck"/> found wrong with an encoded image (empty for tensors and for images that pass).
    /// </summary>
    public static async Task<(float[][] Images, IReadOnlyList<string>[] Warnings)> DecodeAsync(ClassifyRequest request, ImagePreprocessor preprocessor, int maxImages,
        DecodePool pool, CancellationToken cancellationToken, ImageBuffers? buffers = null)
    {
        Func<float[]> newImage = buffers is not null && buffers.ImageLength == preprocessor.OutputLength
            ? buffers.RentImage
            : () => new float[preprocessor.OutputLength];
        return request.InputCase switch
        {
            ClassifyRequest.InputOneofCase.Tensor => WithoutWarnings(DecodeTensor(request.Tensor, preprocessor, maxImages, newImage)),
            ClassifyRequest.InputOneofCase.Encoded => await DecodeEncodedAsync(request.Encoded, preprocessor, maxImages, pool, newImage, cancellationToken).ConfigureAwait(false),
            _ => throw NoInput(),
        };
    }

    private static (float[][], IReadOnlyList<string>[]) WithoutWarnings(float[][] images) =>
        (images, Enumerable.Repeat<IReadOnlyList<string>>([], images.Length).ToArray());

    private static InvalidRequestException NoInput() => new("The request has no input: set tensor or encoded.");

    private static InvalidRequestException EmptyEncoded() => new("encoded.images is empty: send at least one PNG or JPEG image.");

    private static async Task<(float[][], IReadOnlyList<string>[])> DecodeEncodedAsync(EncodedImages encoded, ImagePreprocessor preprocessor, int maxImages,
        DecodePool pool, Func<float[]> newImage, CancellationToken cancellationToken)
    {
        int count = encoded.Images.Count;
        if (count == 0)
        {
            throw EmptyEncoded();
        }
        CheckCount(count, maxImages);

        var images = new float[count][];
        var warnings = new IReadOnlyList<string>[count];
        for (int i = 0; i < count; i++)
        {
            images[i] = newImage();
            try
            {
                ImageFacts facts = await pool.DecodeAsync(preprocessor, encoded.Images[i].Memory, images[i], cancellationToken).ConfigureAwait(false);
                warnings[i] = RadiographCheck.Warnings(facts);
            }
            catch (InvalidImageException ex)
            {
                throw new InvalidRequestException($"encoded.images[{i}]: {ex.Message}");
            }
        }
        return (images, warnings);
    }

    private static float[][] DecodeTensor(Tensor tensor, ImagePreprocessor preprocessor, int maxImages, Func<float[]> newImage)
    {
        int size = preprocessor.Spec.CropSize;
        var shape = tensor.Shape;
        string shown = $"[{string.Join(",", shape)}]";
        if (shape.Count is not (3 or 4))
        {
            throw new InvalidRequestException(
                $"tensor.shape {shown} has {shape.Count} dimensions; expected [C,{size},{size}] or [N,C,{size},{size}] with C = 1 or 3.");
        }

        long count = shape.Count == 4 ? shape[0] : 1;
        long channels = shape[^3];
        if (count < 1 || channels is not (1 or 3) || shape[^2] != size || shape[^1] != size)
        {
            throw new InvalidRequestException(
                $"tensor.shape {shown} is not accepted; expected [C,{size},{size}] or [N,C,{size},{size}] with N >= 1 and C = 1 or 3.");
        }
        CheckCount(count, maxImages);
        if (tensor.Dtype == DataType.Float32 && channels != 1 && preprocessor.Spec.Channels == 1)
        {
            throw new InvalidRequestException(
                $"tensor.shape {shown} has {channels} channels; this model takes normalised float32 tensors with C = 1 (gray). " +
                "Send C = 1, or DATA_TYPE_UINT8 (3 channels are converted to luma).");
        }

        int elementSize = tensor.Dtype switch
        {
            DataType.Float32 => sizeof(float),
            DataType.Uint8 => sizeof(byte),
            _ => throw new InvalidRequestException($"tensor.dtype {tensor.Dtype} is not accepted; use DATA_TYPE_FLOAT32 or DATA_TYPE_UINT8."),
        };
        int imageElements = (int)channels * size * size;
        long expectedBytes = count * imageElements * elementSize;
        ReadOnlySpan<byte> data = tensor.Data.Span;
        if (data.Length != expectedBytes)
        {
            throw new InvalidRequestException(
                $"tensor.data has {data.Length} bytes; shape {shown} of {tensor.Dtype} needs {expectedBytes}.");
        }

        var images = new float[count][];
        for (int i = 0; i < count; i++)
        {
            images[i] = newImage();
            ReadOnlySpan<byte> bytes = data.Slice(i * imageElements * elementSize, imageElements * elementSize);
            if (tensor.Dtype == DataType.Uint8)
            {
                preprocessor.NormalizeUInt8(bytes, (int)channels, images[i]);
            }
            else
            {
                // The wire format is little-endian, as is every platform .NET runs this server on.
                ReadOnlySpan<float> floats = MemoryMarshal.Cast<byte, float>(bytes);
                int bad = IndexOfOutOfRange(floats);
                if (bad >= 0)
                {
                    throw new InvalidRequestException(
                        $"tensor.data holds {floats[bad]} at image {i}, element {bad}; normalised values must be finite and within ±{MaxAbsFloatInput}.");
                }
                preprocessor.CopyFloat(floats, (int)channels, images[i]);
            }
        }
        return images;
    }

    /// <summary>
    /// Largest magnitude of a normalised float32 input value. Real normalised pixels lie within about ±5; values near
    /// float's limits overflow inside the network and come out as NaN logits.
    /// </summary>
    public const float MaxAbsFloatInput = 1000f;

    private static int IndexOfOutOfRange(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            // Written so that NaN fails it too.
            if (!(Math.Abs(values[i]) <= MaxAbsFloatInput)) return i;
        }
        return -1;
    }

    private static void CheckCount(long count, int maxImages)
    {
        if (count > maxImages)
        {
            throw new InvalidRequestException($"The request has {count} images; at most {maxImages} are accepted per request.");
        }
    }
}
