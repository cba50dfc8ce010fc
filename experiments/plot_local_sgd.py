#!/usr/bin/env python3
"""Figure of the local-SGD comparisons: training loss (smoothed) and test loss of the global
parameters against communication rounds, one column per comparison, mean over the report seeds
(shaded: min..max). Reads each comparison's summary (for its contenders and report seeds) and run
files.

usage: /usr/bin/python3 experiments/plot_local_sgd.py results/local_sgd/h4.h5 ... -o fig.png
"""
import argparse
import json
import os

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def smooth(y, k):
    if k <= 1 or len(y) < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([y[: k - 1], out])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("summaries", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--smooth", type=int, default=10, help="moving-average window of the training loss")
    args = ap.parse_args()
    n = len(args.summaries)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 6.4), squeeze=False)
    for col, path in enumerate(args.summaries):
        with h5py.File(path, "r") as f:
            spec = json.loads(f.attrs["config"])
            rows = json.loads(f.attrs["summary"])
        out_dir = spec["output_dir"]
        H = spec["base"]["local_sgd"]["local_steps"]
        title = os.path.splitext(os.path.basename(path))[0]
        for row in rows:
            name = row["name"]
            train, test, steps, tsteps = [], [], None, None
            for seed in spec["seeds"]:
                run = os.path.join(out_dir, f"{name}_seed{seed}.h5")
                if not os.path.exists(run):
                    continue
                with h5py.File(run, "r") as r:
                    if r.attrs["status"] != "completed":
                        continue
                    steps = r["train/step"][:]
                    train.append(smooth(r["train/loss"][:], args.smooth))
                    tsteps = r["eval/step"][:]
                    test.append(r["eval/test_loss"][:])
            if not train:
                continue
            for ax, xs, ys in ((axes[0][col], steps, train), (axes[1][col], tsteps, test)):
                ys = np.array(ys)
                (line,) = ax.plot(xs, ys.mean(0), label=name, lw=1.4)
                ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        axes[0][col].set_title(f"{title}: K = {spec['base']['local_sgd']['workers']}, H = {H}")
        axes[0][col].set_ylabel("training loss (global params)")
        axes[1][col].set_ylabel("test loss")
        axes[1][col].set_xlabel("communication round")
        for ax in (axes[0][col], axes[1][col]):
            ax.grid(alpha=0.3)
            lo = min(l.get_ydata().min() for l in ax.get_lines()) if ax.get_lines() else 0
            ax.set_ylim(lo * 0.95, lo * 2.2 if lo > 0 else 2.5)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
