# Stand-in for the GPU target's CUDA runtime image (nvidia/cuda ...-runtime-ubuntu24.04), which cannot be pulled
# here: the plain OS, no unprivileged user, no CUDA. Checks that the runtime-gpu stage builds and runs non-root; the
# server falls back to the CPU without a GPU.
FROM xray-test/bookworm
