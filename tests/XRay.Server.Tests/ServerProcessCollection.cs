namespace XRay.Server.Tests;

/// <summary>
/// Tests that start server processes run one at a time, after the others: each process loads a model and competes
/// for the two cores, so in parallel they would starve each other's start-up past its bound.
/// </summary>
[CollectionDefinition(nameof(ServerProcessCollection), DisableParallelization = true)]
public sealed class ServerProcessCollection;
