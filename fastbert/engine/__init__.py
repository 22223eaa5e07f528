"""The padding-free encoder: packing of real tokens, the two interchangeable op backends (Triton kernels,
plain PyTorch), the per-shape GEMM picker, CUDA graphs per shape bucket and the pinned staging ring."""
