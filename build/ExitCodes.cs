namespace XRay;

/// <summary>The exit codes every XRay tool uses (README, "Exit codes").</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    public const int Internal = 1;
    public const int Usage = 2;
    public const int NotFound = 3;
    public const int Unreachable = 4;
    public const int Refused = 5;
    public const int CredentialsRefused = 6;
    public const int NotServing = 7;
}
