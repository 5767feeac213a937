namespace XRay.Batching; internal static class Placeholder { }
