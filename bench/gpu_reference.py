#!/usr/bin/env python3
"""PyTorch's fused AdamW step on the GPU on the parameter sets of bench/bench_gpu.cpp (the reference the
GPU issue's goals are stated against), median of 20 steps by CUDA events. Prints one line per set.

usage: python3 bench/gpu_reference.py   (a machine with a GPU and PyTorch with CUDA)
"""
import torch


def shapes(kind):
    if kind == 0:
        return [(512, 512)] * 4
    if kind == 1:
        return [(1024, 784), (1024,), (1024, 1024), (1024,), (10, 1024), (10,)]
    if kind == 2:
        return [(1024, 1024)] * 5
    d = 768
    s = [(50257, d), (1024, d)]
    for _ in range(12):
        s += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return s + [(d,), (d,)]


def main():
    names = ["1M (4x512^2)", "MLP 784-1024-1024-10", "5M (5x1024^2)", "GPT-2 small 124M"]
    for kind, name in enumerate(names):
        ps = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.05) for s in shapes(kind)]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-2
        opt = torch.optim.AdamW(ps, lr=1e-3, fused=True)
        for _ in range(3):
            opt.step()
        times = []
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            opt.step()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        times.sort()
        n = sum(p.numel() for p in ps)
        print(f"torch AdamW fused  {name:24s} {n / 1e6:8.2f}M  median {times[len(times) // 2]:8.3f} ms")


if __name__ == "__main__":
    main()
