#!/usr/bin/python3
"""Per-tensor diagnostics of a sweep whose runs set "diagnostics": true, as a Markdown table.

For each run (one row per group and x value, mean over seeds) and the tensors of one role: the
final training loss, the step's mean cosine with the gradient and with the parameters over the
evaluations inside --steps (the schedule's ends excluded by default), and the tensor's RMS at
initialisation and at the end.

Usage: diagnostics_table.py SWEEP.h5 [--role hidden_weight] [--x task.width] [--group @name]
                            [--steps 100-950]"""
import argparse
import json
import sys

import h5py
import numpy as np


def point_value(point, key):
    if key not in point:
        sys.exit(f"diagnostics_table.py: the sweep's points have no key {key!r} (they have {sorted(point)}): "
                 "pass --x / --group")
    return point[key]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("summary")
    ap.add_argument("--role", default="hidden_weight")
    ap.add_argument("--x", default="task.width")
    ap.add_argument("--group", default="@name")
    ap.add_argument("--steps", default="100-950", help="evaluations whose step lies in A-B are averaged")
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.steps.split("-"))
    with h5py.File(args.summary, "r") as f:
        runs = json.loads(f.attrs["runs"])
    cells = {}
    for r in runs:
        key = (str(point_value(r["point"], args.group)), point_value(r["point"], args.x))
        with h5py.File(r["file"], "r") as f:
            if "diagnostics" not in f:
                sys.exit(f"diagnostics_table.py: {r['file']} has no diagnostics group: "
                         "run the sweep with \"diagnostics\": true in its base")
            names = json.loads(f["diagnostics"].attrs["tensors"])
            cols = [i for i, n in enumerate(names) if n.endswith(f"({args.role})")]
            if not cols:
                sys.exit(f"diagnostics_table.py: no tensor of role {args.role!r} in {r['file']} (tensors: {names})")
            step = f["eval/step"][:]
            sel = (step >= lo) & (step <= hi)
            rms = f["diagnostics/tensor_rms"][:, cols]
            vals = [float(f.attrs["final_train_loss"]),
                    float(np.mean(f["diagnostics/update_grad_cosine"][sel][:, cols])),
                    float(np.mean(f["diagnostics/update_param_cosine"][sel][:, cols])),
                    float(np.mean(rms[0])), float(np.mean(rms[-1]))]
        cells.setdefault(key, []).append(vals)
    print(f"| {args.group} | {args.x} | final train loss | cos(step, gradient) | cos(step, θ) | "
          f"RMS of {args.role}: init → end |")
    print("|---|---|---|---|---|---|")
    for (g, x), v in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        m = np.mean(np.array(v), axis=0)
        print(f"| {g} | {x} | {m[0]:.4f} | {m[1]:.3f} | {m[2]:+.3f} | {m[3]:.3f} → {m[4]:.3f} |")


if __name__ == "__main__":
    main()
