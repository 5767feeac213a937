using System.Runtime.InteropServices;
using Google.Protobuf;
using XRay.Contracts.V1;

namespace XRay.Client;

/// <summary>Builds the wire <see cref="Tensor"/>: little-endian, row-major bytes.</summary>
public static class Tensors
{
    public static Tensor Float32(ReadOnlySpan<float> data, params long[] shape) =>
        Create(MemoryMarshal.AsBytes(data), DataType.Float32, shape);

    public static Tensor UInt8(ReadOnlySpan<byte> data, params long[] shape) =>
        Create(data, DataType.Uint8, shape);

    private static Tensor Create(ReadOnlySpan<byte> bytes, DataType dtype, long[] shape)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("The tensor wire format is little-endian.");
        }
        var tensor = new Tensor { Dtype = dtype, Data = ByteString.CopyFrom(bytes) };
        tensor.Shape.Add(shape);
        return tensor;
    }
}
