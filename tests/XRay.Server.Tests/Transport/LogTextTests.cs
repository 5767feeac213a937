using XRay.Server.Grpc;

namespace XRay.Server.Tests.Transport;

public sealed class LogTextTests
{
    [Theory]
    [InlineData("req-42", "req-42")]
    [InlineData("a\nb", "a\\u000ab")]
    [InlineData("\u001b[31mred", "\\u001b[31mred")]
    [InlineData("back\\slash", "back\\u005cslash")]
    [InlineData("é", "\\u00e9")]
    [InlineData("", "")]
    public void Quote_EscapesWhatIsNotPrintableAscii(string value, string expected) => Assert.Equal(expected, LogText.Quote(value));

    [Fact]
    public void Quote_CutsLongValues_AndSaysHowMuchWasCut()
    {
        string quoted = LogText.Quote(new string('x', 1_000_000));

        Assert.Equal(new string('x', LogText.MaxLength) + "…(+" + (1_000_000 - LogText.MaxLength) + ")", quoted);
    }
}
