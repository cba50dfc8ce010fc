#!/usr/bin/python3
"""Draws lopt HDF5 result files to a PNG.

Usage: plot.py FILE.h5 [FILE.h5 ...] -o OUT.png [--table]

The kind of plot follows the files' "kind" attribute:
  train        training loss (smoothed) and the task's report metric (test accuracy, validation bits
               per byte) against step, one line per file
  coord_check  activation RMS against width, one panel per (parametrization, layer), one line per step
  sweep        final training loss against learning rate, one panel per parametrization, one line
               per width; --table also prints the best learning rate of each (parametrization, width)
  compare      training loss (mean over report seeds) of each contender at its chosen config, and the
               tuning scores over LR per schedule
  meta_train   meta-loss (smoothed) against outer step, one line per file
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
    metric = "test_accuracy"
    for path in files:
        with h5py.File(path, "r") as f:
            cfg = json.loads(f.attrs["config"])
            metric = text(f.attrs["report_metric"]) if "report_metric" in f.attrs else "test_accuracy"
            lab = label_of(path, cfg)
            step, loss = f["train/step"][:], f["train/loss"][:]
            a1.plot(step, smooth(loss), label=lab)
            a2.plot(f["eval/step"][:], f["eval/" + metric][:], marker="o", label=lab)
    a1.set_xlabel("step"), a1.set_ylabel("training loss (smoothed)"), a1.set_yscale("log")
    a2.set_xlabel("step"), a2.set_ylabel(metric.replace("_", " "))
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


def plot_axis_sweep(rows, spec, out):
    """Final training loss against the sweep's x key, one line per group (mean +- std over the other
    keys, e.g. seeds; diverged runs marked with x at the top), or with "curves" the mean training-loss
    curve of each (group, x)."""
    x, group = spec["x"], spec.get("group", "")
    cells = {}
    for r in rows:
        pt = r["point"]
        key = (str(pt.get(group, "all")) if group else "all", pt.get(x))
        cells.setdefault(key, []).append(r)
    groups = list(dict.fromkeys(k[0] for k in cells))
    if spec.get("curves"):
        xs = list(dict.fromkeys(k[1] for k in cells))
        fig, axes = plt.subplots(1, len(xs), figsize=(6 * len(xs) + (2 if len(groups) > 8 else 0), 4.6), squeeze=False)
        if len(groups) > 10:
            for ax in axes[0]:
                ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
        for i, xv in enumerate(xs):
            ax = axes[0][i]
            for g in groups:
                curves = []
                for r in cells.get((g, xv), []):
                    if r.get("final_train_loss") is None:
                        continue
                    with h5py.File(r["file"], "r") as f:
                        curves.append(f["train/loss"][:])
                if curves:
                    n = min(len(c) for c in curves)
                    mean = np.mean([c[:n] for c in curves], axis=0)
                    ax.plot(np.arange(1, n + 1), smooth(mean, 0.01), label=f"{g} (n={len(curves)})")
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_xlabel("step"), ax.set_ylabel("training loss (mean over seeds, smoothed)")
            if spec.get("ymax"):
                ax.set_ylim(top=spec["ymax"])
            if xv is not None:
                ax.set_title(f"{x} = {xv}")
            ax.grid(alpha=0.3), ax.legend(fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ymax = spec.get("ymax")
        marked = False
        for g in groups:
            pts = sorted((k[1], v) for k, v in cells.items() if k[0] == g)
            xv, mean, sd, off, div = [], [], [], [], []
            for xval, rs in pts:
                finite = [r["final_train_loss"] for r in rs if r.get("final_train_loss") is not None]
                if finite and (ymax is None or np.mean(finite) <= ymax):
                    xv.append(xval), mean.append(np.mean(finite)), sd.append(np.std(finite, ddof=1) if len(finite) > 1 else 0)
                elif finite:
                    off.append(xval)  # mean above the axis: marked at the top
                if len(finite) < len(rs):
                    div.append(xval)
            line = ax.errorbar(xv, mean, yerr=sd, marker="o", capsize=3, label=g)
            color = line[0].get_color()
            if off:
                ax.plot(off, [ymax] * len(off), "^", color=color, ms=10, clip_on=False)
            if div:
                ax.plot(div, [ymax or ax.get_ylim()[1]] * len(div), "x", color=color, ms=10, clip_on=False)
            marked = marked or bool(off) or bool(div)
        if ymax and marked:
            ax.set_ylim(top=ymax)
            ax.text(0.99, 0.01, f"^ mean above {ymax}   x a seed diverged (NaN)", transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
        if spec.get("logx"):
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(x), ax.set_ylabel("final training loss (mean ± std over seeds)")
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
    if spec.get("title"):
        import textwrap
        fig.suptitle("\n".join(textwrap.wrap(spec["title"], 70)), fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_sweep(path, out, table):
    with h5py.File(path, "r") as f:
        rows = json.loads(f.attrs["runs"])
        spec = json.loads(f.attrs["config"]).get("plot")
    if spec:
        return plot_axis_sweep(rows, spec, out)
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


def text(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def plot_compare(path, out):
    with h5py.File(path, "r") as f:
        n = int(f.attrs["contenders"])
        cfg = json.loads(f.attrs["config"])
        rows = []
        for i in range(n):
            g = f[f"c{i}"]
            tuned = "tune_lr" in g
            rows.append(dict(name=text(g.attrs["name"]), best=float(g.attrs["best_lr"]), curve=g["train_loss_mean"][:],
                             tune_lr=g["tune_lr"][:] if tuned else None,
                             tune_sched=g["tune_schedule"][:].astype(int) if tuned else None,
                             tune_score=g["tune_score"][:] if tuned else None,
                             schedules=json.loads(text(g.attrs["schedules"])) if tuned else [],
                             final=float(g.attrs["mean_final_train_loss"]),
                             sd=float(g.attrs["std_final_train_loss"]) if "std_final_train_loss" in g.attrs else 0.0))
    task = cfg.get("base", {}).get("task", {})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.3))
    styles = ["-", "--", ":", "-."]
    for r in rows:
        fin = f"{r['final']:.3f} ± {r['sd']:.3f}" if math.isfinite(r["final"]) else "diverged"
        lab = r["name"] + ("" if math.isnan(r["best"]) else f" (lr {r['best']:.3g})") + f": {fin}"
        curve = r["curve"] if len(r["curve"]) else np.array([np.nan])
        line, = a1.plot(np.arange(1, len(curve) + 1), smooth(curve), label=lab)
        if r["tune_lr"] is not None:
            for k, sched in enumerate(r["schedules"]):
                sel = r["tune_sched"] == k
                order = np.argsort(r["tune_lr"][sel])
                lr, sc = r["tune_lr"][sel][order], r["tune_score"][sel][order]
                sc = np.where(np.isfinite(sc), sc, np.nan)
                a2.plot(lr, sc, marker="o", ls=styles[k % len(styles)], color=line.get_color(),
                        label=f"{r['name']}, {sched.get('type')}")
        elif math.isfinite(r["final"]):
            a2.axhline(r["final"], color=line.get_color(), ls="--", label=r["name"] + " (held-out seeds)")
    a1.set_xlabel("step"), a1.set_ylabel("training loss (mean over report seeds, smoothed)"), a1.set_yscale("log")
    shape = (f"{task.get('image_size', '?')}px" if task.get("type", "mlp") == "mlp"
             else f"{task.get('type')}, context {task.get('context', '?')}, {task.get('corpus', '?')}")
    a1.set_title(f"width {task.get('width', '?')}, depth {task.get('depth', '?')}, "
                 f"{shape}, {task.get('parametrization', {}).get('type', '?')}", fontsize=10)
    a2.set_xscale("log"), a2.set_yscale("log")
    a2.set_xlabel("learning rate"), a2.set_ylabel("final training loss (mean over tuning seeds)")
    for a in (a1, a2):
        a.grid(alpha=0.3), a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_meta_train(files, out):
    fig, ax = plt.subplots(figsize=(7, 4))
    for path in files:
        with h5py.File(path, "r") as f:
            step, loss = f["meta/step"][:], f["meta/meta_loss"][:]
        ok = np.isfinite(loss)
        ax.plot(step[ok], smooth(loss[ok], 0.05), label=os.path.basename(os.path.dirname(os.path.abspath(path))))
    ax.set_xlabel("outer step"), ax.set_ylabel("meta-loss (smoothed)")
    ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


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
    elif kind == "compare":
        plot_compare(args.files[0], args.output)
    elif kind == "meta_train":
        plot_meta_train(args.files, args.output)
    elif kind == "sweep":
        plot_sweep(args.files[0], args.output, args.table)
    else:
        plot_train(args.files, args.output)
    print(f"plot.py: wrote {args.output}")


if __name__ == "__main__":
    main()
