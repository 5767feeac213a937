namespace XRay.Model;

/// <summary>The bytes given as an image could not be decoded; the message says why (format, size, truncation).</summary>
public sealed class InvalidImageException : Exception
{
    public InvalidImageException()
    {
    }

    public InvalidImageException(string message) : base(message)
    {
    }

    public InvalidImageException(string message, Exception innerException) : base(message, innerException)
    {
    }
}
