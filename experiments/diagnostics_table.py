#!/usr/bin/python3
"""Per-tensor diagnostics of a sweep whose runs set "diagnostics": true, as a Markdown table.

For each run (one row per group and x value, mean over seeds) and the tensors of one role: the
final training loss, the step's mean cosine with the gradient and with the parameters over the
evaluations inside --steps (the schedule's ends excluded by default), and the tensor's RMS at
initialisation and at the end. With --spectra, a second table: the mean cosine with the parameters
of the direction an orthogonalising optimizer hands to Newton-Schulz beside its step's, and the
stable ranks (|A|_F^2 / sigma_max^2) of the gradient, that direction and the step ("-" where the
optimizer has no such direction; result files written before these datasets existed are refused).

Usage: diagnostics_table.py SWEEP.h5 [--role hidden_weight] [--x task.width] [--group @name]
                            [--steps 100-950] [--spectra]"""
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
    ap.add_argument("--spectra", action="store_true",
                    help="also the pre-orthogonalisation direction's cosine with the parameters and the stable ranks")
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
            mean = lambda name: float(np.mean(f["diagnostics/" + name][sel][:, cols]))
            vals = [float(f.attrs["final_train_loss"]), mean("update_grad_cosine"), mean("update_param_cosine"),
                    float(np.mean(rms[0])), float(np.mean(rms[-1]))]
            if args.spectra:
                if "diagnostics/grad_stable_rank" not in f:
                    sys.exit(f"diagnostics_table.py: {r['file']} has no stable ranks (written before they were "
                             "recorded): rerun its sweep, or leave out --spectra")
                vals += [mean("direction_param_cosine"), mean("grad_stable_rank"), mean("direction_stable_rank"),
                         mean("update_stable_rank")]
        cells.setdefault(key, []).append(vals)
    print(f"| {args.group} | {args.x} | final train loss | cos(step, gradient) | cos(step, θ) | "
          f"RMS of {args.role}: init → end |")
    print("|---|---|---|---|---|---|")
    rows = [(g, x, np.mean(np.array(v), axis=0)) for (g, x), v in sorted(cells.items(), key=lambda kv: kv[0])]
    for g, x, m in rows:
        print(f"| {g} | {x} | {m[0]:.4f} | {m[1]:.3f} | {m[2]:+.3f} | {m[3]:.3f} → {m[4]:.3f} |")
    if not args.spectra:
        return
    opt = lambda v, spec: "-" if np.isnan(v) else format(v, spec)
    print()
    print(f"| {args.group} | {args.x} | cos(direction before Newton-Schulz, θ) | cos(step, θ) | "
          "stable rank: gradient | direction | step |")
    print("|---|---|---|---|---|---|---|")
    for g, x, m in rows:
        print(f"| {g} | {x} | {opt(m[5], '+.3f')} | {m[2]:+.3f} | {m[6]:.1f} | {opt(m[7], '.1f')} | {m[8]:.1f} |")


if __name__ == "__main__":
    main()
