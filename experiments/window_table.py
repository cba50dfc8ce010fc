#!/usr/bin/python3
"""Long-horizon table of a sweep: mean training loss over step windows, the final parameter norm and
test accuracy, per group (mean over the group's seeds).

Usage: window_table.py SWEEP.h5 [--windows 1-1000,1001-2000,4001-5000,9001-10000] [--group @name]
Prints a Markdown table (the README's long-horizon table)."""
import argparse
import json

import h5py
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("summary")
    ap.add_argument("--windows", default="1-1000,1001-2000,4001-5000,9001-10000")
    ap.add_argument("--group", default="@name")
    args = ap.parse_args()
    windows = [tuple(int(x) for x in w.split("-")) for w in args.windows.split(",")]
    with h5py.File(args.summary, "r") as f:
        rows = json.loads(f.attrs["runs"])
    groups = {}
    for r in rows:
        groups.setdefault(str(r["point"].get(args.group, "all")), []).append(r)
    head = " | ".join(f"{b / 1000:g}k" for _, b in windows)
    print(f"| optimizer | {head} | ‖θ‖ at end | test acc | seeds |")
    print("|---|" + "---|" * (len(windows) + 3))
    for name, rs in groups.items():
        cols, norms, accs = [[] for _ in windows], [], []
        for r in rs:
            with h5py.File(r["file"], "r") as f:
                loss, step = f["train/loss"][:], f["train/step"][:]
                for k, (a, b) in enumerate(windows):
                    sel = (step >= a) & (step <= b)
                    if sel.any():
                        cols[k].append(float(np.mean(loss[sel])))
                norms.append(float(f["eval/param_norm"][-1]))
                accs.append(float(f["eval/test_accuracy"][-1]))
        cells = " | ".join(f"{np.mean(c):.3f}" if c else "-" for c in cols)
        print(f"| {name} | {cells} | {np.mean(norms):.0f} | {np.mean(accs):.3f} | {len(rs)} |")


if __name__ == "__main__":
    main()
