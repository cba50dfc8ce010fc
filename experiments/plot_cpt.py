#!/usr/bin/python3
"""Figures and a table of the continual pre-training study (`lopt cpt` files, experiments/cpt_study.py).

usage: /usr/bin/python3 experiments/plot_cpt.py results/cpt -o results/figures/cpt
writes <prefix>_loss.png (validation loss per corpus against tokens, the shift marked, one panel per
run of the English -> German rewarm/infinite grid), <prefix>_mri.png (maximum routing imbalance per
layer against step, on the old and new data), <prefix>_replay.png (forgetting and adaptation
against the replay fraction), <prefix>_lopt.png (learned optimizers against AdamW through the shift) and prints a markdown table (final losses, forgetting, tokens/s).
"""
import argparse
import glob
import json
import os

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def load(path):
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["config"])
        ev = {k: f["eval"][k][:] for k in f["eval"].keys()}
        attrs = {k: f.attrs[k] for k in f.attrs.keys()}
    return cfg, ev, attrs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("-o", "--output", required=True, help="prefix of the PNG files")
    args = ap.parse_args()
    runs = {os.path.splitext(os.path.basename(p))[0]: load(p) for p in sorted(glob.glob(os.path.join(args.folder, "*.h5")))}
    if not runs:
        raise SystemExit(f"no cpt result files in {args.folder}")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    tokens = lambda cfg: cfg["task"]["batch_size"] * cfg["task"]["context"]  # noqa: E731

    # Loss curves with the shift marked.
    grid = [n for n in runs if "_german_" in n and "replay25" in n and not n.startswith("mup-")]
    if grid:
        fig, axes = plt.subplots(1, len(grid), figsize=(3.6 * len(grid), 3.2), squeeze=False, sharey=True)
        for ax, name in zip(axes[0], grid):
            cfg, ev, _ = runs[name]
            x = ev["step"] * tokens(cfg) / 1e6
            for corpus in cfg["eval_corpora"]:
                if corpus + "_loss" in ev:
                    ax.plot(x, ev[corpus + "_loss"], label=corpus)
            ax.axvline(cfg["phases"][0]["steps"] * tokens(cfg) / 1e6, color="k", ls="--", lw=0.8)
            ax.set_title(name.replace("_replay25", ""), fontsize=8)
            ax.set_xlabel("tokens (M)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("validation loss (nats/byte)")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.output + "_loss.png", dpi=110)

    # MRI per layer on the old (english) and new (german) data.
    moe = [n for n in grid if not n.startswith("dense")]
    if moe:
        fig, axes = plt.subplots(1, len(moe), figsize=(3.6 * len(moe), 3.2), squeeze=False, sharey=True)
        for ax, name in zip(axes[0], moe):
            cfg, ev, _ = runs[name]
            for corpus, ls in (("english", "-"), ("german", ":")):
                for layer in range(cfg["task"]["depth"]):
                    key = f"{corpus}_mri_{layer}"
                    if key in ev:
                        ax.plot(ev["step"], ev[key], ls=ls, color=f"C{layer}", label=f"{corpus} L{layer}" if ls == "-" or layer == 0 else None)
            ax.axvline(cfg["phases"][0]["steps"], color="k", ls="--", lw=0.8)
            ax.set_title(name.replace("_replay25", ""), fontsize=8)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("max routing imbalance")
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(args.output + "_mri.png", dpi=110)

    # Forgetting / adaptation against replay.
    sweep = sorted((int(n.rsplit("replay", 1)[1]), n) for n in runs if n.startswith("switch-sinkhorn_german_rewarm_replay"))
    if sweep:
        fig, ax = plt.subplots(figsize=(4.4, 3.2))
        xs = [r for r, _ in sweep]
        ax.plot(xs, [runs[n][2]["forgetting_english"] for _, n in sweep], "o-", color="C0")
        ax.set_ylabel("forgetting: english loss rise", color="C0")
        ax2 = ax.twinx()
        ax2.plot(xs, [runs[n][2]["final_german_loss"] for _, n in sweep], "s--", color="C1")
        ax2.set_ylabel("final german loss", color="C1")
        ax.set_xlabel("replay (% of every batch)")
        ax.set_title("Switch-Sinkhorn, english -> german, re-warm", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.output + "_replay.png", dpi=110)

    # Learned optimizers against AdamW through the shift (muP Switch-Sinkhorn).
    lo = [n for n in runs if n.startswith("mup-")]
    if lo:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharex=True)
        for i, name in enumerate(sorted(lo)):
            cfg, ev, _ = runs[name]
            x = ev["step"] * tokens(cfg) / 1e6
            label = name.replace("mup-switch-sinkhorn_german_", "").replace("_replay25", "")
            for ax, corpus in zip(axes, ("english", "german")):
                ax.plot(x, ev[corpus + "_loss"], color=f"C{i}", label=label)
        for ax, corpus in zip(axes, ("english", "german")):
            ax.axvline(runs[lo[0]][0]["phases"][0]["steps"] * tokens(runs[lo[0]][0]) / 1e6, color="k", ls="--", lw=0.8)
            ax.set_title(f"{corpus} validation loss", fontsize=9)
            ax.set_xlabel("tokens (M)")
            ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.output + "_lopt.png", dpi=110)

    print("| run | final english | final german | final code | forgetting (english) | tokens/s (phases) | training min |")
    print("|---|---|---|---|---|---|---|")
    total = 0.0
    for name, (cfg, ev, at) in runs.items():
        tps = " / ".join(f"{at[k]:.0f}" for k in sorted(at) if k.startswith("tokens_per_s_phase"))
        # training time: each phase's tokens at its measured rate (evaluations excluded)
        minutes = sum(ph["steps"] * tokens(cfg) / at[f"tokens_per_s_phase{i}"] for i, ph in enumerate(cfg["phases"])) / 60
        total += minutes
        f = lambda k: f"{at[k]:.4f}" if k in at else "-"  # noqa: E731
        print(f"| {name} | {f('final_english_loss')} | {f('final_german_loss')} | {f('final_code_loss')} | {f('forgetting_english')} | {tps} | {minutes:.0f} |")
    print(f"\n{len(runs)} runs, {total:.0f} minutes of training in all (one thread per run)")


if __name__ == "__main__":
    main()
