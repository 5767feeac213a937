using Microsoft.Extensions.Time.Testing;

namespace XRay.Batching.Tests;

public class BatchingOptionsTests
{
    [Fact]
    public void Defaults_AreTheDocumentedConstantsAndValid()
    {
        var options = new BatchingOptions();

        options.Validate();
        Assert.Equal(32, options.MaxBatchSize);
        Assert.Equal(0, options.MaxQueueDelayMicroseconds);
        Assert.Equal(TimeSpan.Zero, options.MaxQueueDelay);
        Assert.Equal(1024, options.MaxQueueSize);
        Assert.Equal(1, options.ModelInstances);
        Assert.Equal("Batching", BatchingOptions.SectionName);
    }

    [Fact]
    public void MaxQueueDelay_IsMicroseconds()
    {
        var options = new BatchingOptions { MaxQueueDelayMicroseconds = 2500 };

        Assert.Equal(TimeSpan.FromMilliseconds(2.5), options.MaxQueueDelay);
    }

    [Theory]
    [InlineData(nameof(BatchingOptions.MaxBatchSize), 0, "between 1 and 4096")]
    [InlineData(nameof(BatchingOptions.MaxBatchSize), 4097, "between 1 and 4096")]
    [InlineData(nameof(BatchingOptions.MaxQueueDelayMicroseconds), -1, "between 0 and 10000000")]
    [InlineData(nameof(BatchingOptions.MaxQueueDelayMicroseconds), 10_000_001, "between 0 and 10000000")]
    [InlineData(nameof(BatchingOptions.MaxQueueSize), 0, "between 1 and 1000000")]
    [InlineData(nameof(BatchingOptions.MaxQueueSize), 1_000_001, "between 1 and 1000000")]
    [InlineData(nameof(BatchingOptions.ModelInstances), 0, "between 1 and 64")]
    [InlineData(nameof(BatchingOptions.ModelInstances), 65, "between 1 and 64")]
    public void Validate_OutOfRange_ThrowsNamingOptionValueAndRange(string option, long value, string range)
    {
        var options = new BatchingOptions { MaxBatchSize = 1 };
        typeof(BatchingOptions).GetProperty(option)!.SetValue(options,
            option == nameof(BatchingOptions.MaxQueueDelayMicroseconds) ? value : (object)(int)value);

        var error = Assert.Throws<ArgumentOutOfRangeException>(options.Validate);

        Assert.Equal(option, error.ParamName);
        Assert.Contains($"Batching:{option} is {value}", error.Message);
        Assert.Contains(range, error.Message);
    }

    [Fact]
    public void Validate_QueueSmallerThanBatch_ThrowsNamingBothOptions()
    {
        var options = new BatchingOptions { MaxBatchSize = 64, MaxQueueSize = 16 };

        var error = Assert.Throws<ArgumentOutOfRangeException>(options.Validate);

        Assert.Equal(nameof(BatchingOptions.MaxQueueSize), error.ParamName);
        Assert.Contains("Batching:MaxQueueSize is 16; it must be at least Batching:MaxBatchSize (64)", error.Message);
    }

    [Fact]
    public void DynamicBatcher_InvalidOptions_ThrowsFromConstructor()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            new DynamicBatcher<int, string>(new FakeBatchHandler(), new BatchingOptions { ModelInstances = 0 },
                                            new FakeTimeProvider()));
    }
}
