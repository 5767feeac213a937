// Training and inference on big tensors run several times faster on jemalloc than on glibc malloc (README, Allocator).
if (args.Length > 0 && args[0] is "train" or "evaluate" or "crossval" or "benchmark" or "raw-benchmark") XRay.Model.NativeAllocator.PreloadJemalloc();

return await XRay.Train.TrainApp.RunAsync(args);
