namespace XRay.Model; internal static class Placeholder { }
