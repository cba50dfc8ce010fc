#!/usr/bin/python3
"""Times PyLO's CELO2_naive step beside lopt's Celo2 step on the same machine, alternately.

The parameter sets are lopt_bench's (bench/bench_lopt.cpp make_params): 1M elements of a 1024x1024
matrix ("matrices"), and the MLP 784-1024-1024-10 ("mlp", 1.9M parameters: three matrices through
the network, three biases through AdamW). Gradients ~ N(0, 1e-2), parameters ~ N(0, 0.05), a
randomly initialised CELO2MLP (the released weights cannot be downloaded here; the cost does not
depend on them). Each round times PyLO (median of --iters steps after a warm-up step) and then runs
`lopt_bench --benchmark_filter=BM_Celo2Fused/<type>/<target>` for the same parameter set; the
ratio is taken within a round, so machine noise between minutes does not enter it.

Needs Debian's python3-torch and a PyLO source tree (Belilovsky-Lab/pylo); PyLO's imports that
Debian does not package (huggingface_hub, mup) are stood in for (tests/data/gen_pylo_golden.py).

usage: /usr/bin/python3 bench/pylo_celo2_reference.py --pylo PATH [--lopt-bench build/lopt_bench]
         [--threads 1] [--rounds 2] [--iters 5] [--types celo2,celo2_base] [--sets mlp,matrices]
         [--target best]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "data"))
from gen_pylo_golden import install_stand_ins  # noqa: E402


def make_params(kind):
    """lopt_bench's make_params: (shape, is_1d) in order."""
    if kind == "matrices":
        shapes = [(1024, 1024)]
    else:
        shapes = [(1024, 784), (1024,), (1024, 1024), (1024,), (10, 1024), (10,)]
    return [torch.nn.Parameter(torch.randn(s) * 0.05) for s in shapes]


def time_pylo(kind, celo_type, iters):
    from pylo.models.CELO2_MLP import CELO2MLP
    from pylo.optim import CELO2_naive

    torch.manual_seed(0)
    params = make_params(kind)
    grads = [torch.randn(p.shape) * 1e-2 for p in params]
    opt = CELO2_naive(params, lr=1e-3, orthogonalize=celo_type == "celo2", network=CELO2MLP(), hf_key=None)
    n = sum(p.numel() for p in params)

    def step():
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    step()  # warm-up: state allocation
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e9 / n


def time_lopt(bench, kind, celo_type, target, threads):
    args = "0/1" if kind == "matrices" else "1/0"
    suffix = "" if target == "best" else "/" + target
    name = "BM_Celo2Fused/%s%s/%s/real_time" % (celo_type, suffix, args)
    env = dict(os.environ, LOPT_BENCH_THREADS=str(threads))
    out = subprocess.run([bench, "--lopt_target=" + target, "--benchmark_filter=^" + name.replace("/real_time", "") + "/",
                          "--benchmark_format=json"], capture_output=True, text=True, env=env, check=True).stdout
    rows = [b for b in json.loads(out)["benchmarks"] if b["name"] == name]
    if not rows:
        sys.exit("pylo_celo2_reference: %s did not run %s" % (bench, name))
    return rows[0]["ns/element"], rows[0].get("label", "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pylo", required=True, help="a PyLO source tree (the folder holding pylo/)")
    ap.add_argument("--lopt-bench", default=os.path.join(HERE, "..", "build", "lopt_bench"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--types", default="celo2,celo2_base")
    ap.add_argument("--sets", default="mlp,matrices")
    ap.add_argument("--target", default="best", help="lopt's SIMD target (best, AVX3, AVX2, ...)")
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(a.pylo, "pylo")):
        print("pylo_celo2_reference: %s has no pylo/ folder (give --pylo a PyLO source tree)" % a.pylo, file=sys.stderr)
        return 2
    if not os.access(a.lopt_bench, os.X_OK):
        print("pylo_celo2_reference: %s is not built (scripts/build.sh lopt_bench)" % a.lopt_bench, file=sys.stderr)
        return 2
    sys.path.insert(0, a.pylo)
    install_stand_ins()
    torch.set_num_threads(a.threads)
    print("torch %s, %d thread(s); lopt_bench %s, LOPT_BENCH_THREADS=%d" % (torch.__version__, a.threads, a.lopt_bench, a.threads))
    print("| round | type | set | PyLO CELO2_naive ns/element | lopt fused ns/element (target) | PyLO / lopt |")
    print("|---|---|---|---|---|---|")
    for r in range(a.rounds):
        for celo_type in a.types.split(","):
            for kind in a.sets.split(","):
                pylo = time_pylo(kind, celo_type, a.iters)
                lopt, label = time_lopt(a.lopt_bench, kind, celo_type, a.target, a.threads)
                print("| %d | %s | %s | %.1f | %.1f (%s) | %.1fx |" % (r + 1, celo_type, kind, pylo, lopt, label, pylo / lopt),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
