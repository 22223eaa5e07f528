"""Device check 2: CUDA-graph timings (no Python launch overhead) of kernels/linear.py vs cuBLAS."""
import time

import torch
import torch.nn.functional as F
import triton

from fastbert.kernels import linear as lm

dev = torch.device("cuda")
print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
SHAPES = [(2304, 768, None), (768, 768, None), (3072, 768, "gelu"), (768, 3072, None),
          (1152, 384, None), (384, 384, None), (1536, 384, "gelu"), (384, 1536, None)]
g = lambda fn: triton.testing.do_bench_cudagraph(fn, rep=30)
t0 = time.time()
for M in (8192, 16384, 4096):
    for N, K, act in SHAPES:
        dtype = torch.float16
        x = torch.randn(M, K, device=dev, dtype=dtype)
        w = torch.randn(N, K, device=dev, dtype=dtype) / K**0.5
        b = torch.randn(N, device=dev, dtype=dtype)
        flops = 2 * M * N * K
        y = lm.linear(x, w, b, act)
        t_mm = g(lambda: torch.matmul(x, w.t()))
        t_sep = g(lambda: F.gelu(F.linear(x, w, b))) if act else g(lambda: F.linear(x, w, b))
        t_auto = g(lambda: lm.linear(x, w, b, act))
        torch.cuda.synchronize(); c0 = time.perf_counter()
        for _ in range(200):
            lm.linear(x, w, b, act)
        cpu_us = (time.perf_counter() - c0) / 200 * 1e6
        torch.cuda.synchronize()
        out = torch.empty(M, N, device=dev, dtype=dtype)
        per = []
        for c in lm.linear_configs(True) if M == 8192 else []:
            grid = (triton.cdiv(M, c.kwargs["BLOCK_M"]) * triton.cdiv(N, c.kwargs["BLOCK_N"]),)
            launch = lambda c=c, grid=grid: lm._linear.fn[grid](
                x, w, b, out, M, N, K, triton.next_power_of_2(M), x.stride(0), w.stride(0), out.stride(0),
                HAS_BIAS=True, ACTIVATION=act or "none", INPUT_PRECISION="tf32",
                num_warps=c.num_warps, num_stages=c.num_stages, **c.kwargs)
            launch()
            per.append(g(launch))
        key = next(k for k in lm._linear.cache if k[0] == triton.next_power_of_2(M) and k[1] == N and k[2] == K)
        best = lm._linear.cache[key]
        tf = lambda t: flops / t / 1e9
        print(f"M={M:6d} N={N:5d} K={K:5d} act={str(act):5s} | mm {t_mm*1e3:6.1f}us {tf(t_mm):4.0f}TF | F.linear(+gelu)"
              f" {t_sep*1e3:6.1f}us | ours(graph) {t_auto*1e3:6.1f}us {tf(t_auto):4.0f}TF = {t_mm/t_auto*100:5.1f}% of mm,"
              f" {t_sep/t_auto*100:5.1f}% of unfused | cpu/launch {cpu_us:5.1f}us | best {best.kwargs['BLOCK_M']}x"
              f"{best.kwargs['BLOCK_N']}x{best.kwargs['BLOCK_K']} w{best.num_warps} s{best.num_stages}", flush=True)
        if per:
            print("    per-config us (graph): " + " ".join(f"{t*1e3:.1f}" for t in per), flush=True)
print("bench time", time.time() - t0)
