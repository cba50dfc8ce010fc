#!/usr/bin/python3
"""Draws lopt HDF5 result files to a PNG.

Usage: plot.py FILE.h5 [FILE.h5 ...] -o OUT.png [--table]

The kind of plot follows the files' "kind" attribute:
  train        training loss (smoothed) and test accuracy against step, one line per file
  coord_check  activation RMS against width, one panel per (parametrization, layer), one line per step
  sweep        final training loss against learning rate, one panel per parametrization, one line
               per width; --table also prints the best learning rate of each (parametrization, width)
Needs Debian's python3-h5py and python3-matplotlib.
"""
import argparse
import json
import math
import os
import sys

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def smooth(y, frac=0.02):
    n = max(1, int(len(y) * frac))
    if n <= 1:
        return np.asarray(y)
    kernel = np.ones(n) / n
    padded = np.concatenate([np.full(n - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def label_of(path, cfg):
    opt = cfg.get("optimizer", {})
    task = cfg.get("task", {})
    par = task.get("parametrization", {}).get("type", "?")
    return f"{opt.get('type', '?')} lr={opt.get('lr', '?'):.3g} w={task.get('width', '?')} {par}"


def plot_train(files, out):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for path in files:
        with h5py.File(path, "r") as f:
            cfg = json.loads(f.attrs["config"])
            lab = label_of(path, cfg)
            step, loss = f["train/step"][:], f["train/loss"][:]
            a1.plot(step, smooth(loss), label=lab)
            a2.plot(f["eval/step"][:], f["eval/test_accuracy"][:], marker="o", label=lab)
    a1.set_xlabel("step"), a1.set_ylabel("training loss (smoothed)"), a1.set_yscale("log")
    a2.set_xlabel("step"), a2.set_ylabel("test accuracy")
    a1.legend(fontsize=8), a2.legend(fontsize=8)
    a1.grid(alpha=0.3), a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_coord_check(path, out):
    with h5py.File(path, "r") as f:
        rms = f["rms"][:]  # [P, W, T, L]
        widths = f["widths"][:]
        layers = json.loads(f.attrs["layers"])
        pars = json.loads(f.attrs["parametrizations"])
    P, W, T, L = rms.shape
    fig, axes = plt.subplots(P, L, figsize=(3.2 * L, 2.8 * P), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for p in range(P):
        for l in range(L):
            ax = axes[p][l]
            for t in range(T):
                ax.plot(widths, rms[p, :, t, l], marker="o", ms=3, color=cmap(t / max(1, T - 1)), label=f"t={t}")
            ax.set_xscale("log", base=2), ax.set_yscale("log")
            ax.set_title(f"{pars[p]}: {layers[l]}", fontsize=9)
            ax.set_xlabel("width", fontsize=8)
            ax.grid(alpha=0.3)
            if l == 0:
                ax.set_ylabel("activation RMS", fontsize=8)
    axes[0][L - 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def sweep_table(rows):
    groups = {}
    for r in rows:
        pt = r["point"]
        par = pt.get("task.parametrization.type", "?")
        width = pt.get("task.width", "?")
        lr = pt.get("optimizer.lr")
        groups.setdefault((par, width), []).append((lr, r["final_train_loss"]))
    return groups


def plot_sweep(path, out, table):
    with h5py.File(path, "r") as f:
        rows = json.loads(f.attrs["runs"])
    groups = sweep_table(rows)
    pars = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(1, len(pars), figsize=(5.5 * len(pars), 4), squeeze=False)
    best = []
    for i, par in enumerate(pars):
        ax = axes[0][i]
        for (p, width), pts in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
            if p != par:
                continue
            pts = sorted(pts)
            lrs = [lr for lr, _ in pts]
            losses = [l if l is not None and math.isfinite(l) else np.nan for _, l in pts]
            ax.plot(lrs, losses, marker="o", label=f"width {width}")
            finite = [(l, lr) for lr, l in pts if l is not None and math.isfinite(l)]
            if finite:
                bl, blr = min(finite)
                best.append((par, width, blr, bl))
                ax.plot([blr], [bl], marker="*", ms=14, color=ax.lines[-1].get_color())
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("learning rate"), ax.set_ylabel("final training loss")
        ax.set_title({"mup": "muP (muAdam)", "sp": "SP (Adam)"}.get(par, par))
        ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    if table:
        print("| parametrization | width | best LR | final train loss |")
        print("|---|---|---|---|")
        for par, width, lr, loss in best:
            print(f"| {par} | {width} | {lr:.3g} | {loss:.4f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    for p in args.files:
        if not os.path.exists(p):
            sys.exit(f"plot.py: {p}: no such file")
    with h5py.File(args.files[0], "r") as f:
        kind = f.attrs.get("kind", "train")
    if isinstance(kind, bytes):
        kind = kind.decode()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if kind == "coord_check":
        plot_coord_check(args.files[0], args.output)
    elif kind == "sweep":
        plot_sweep(args.files[0], args.output, args.table)
    else:
        plot_train(args.files, args.output)
    print(f"plot.py: wrote {args.output}")


if __name__ == "__main__":
    main()
