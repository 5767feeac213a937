namespace XRay.Client; internal static class Placeholder { }
