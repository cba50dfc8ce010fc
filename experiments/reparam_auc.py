#!/usr/bin/env python3
"""Mean normalised training loss over a run (the quantity PES meta-training averages), per sweep point.

For a sweep over `task.reparam_scale` with several `@name`s, prints, per scale and name, the mean over
seeds of mean_t clamp(loss_t, 0, 1.5 ln C) — the classifier normaliser the meta-training applies to
each inner step's loss — and, over all scales (log-uniform weights, as the recipe samples s), which
name has the lower mean. Usage: reparam_auc.py SUMMARY.h5 [--classes 10] [--first N]
(--first N: only the first N inner steps of each run, e.g. a short horizon).
"""
import argparse
import collections
import json
import math

import h5py
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--first", type=int, default=0)
    a = ap.parse_args()
    cap = 1.5 * math.log(a.classes)
    with h5py.File(a.summary, "r") as f:
        if not isinstance(f.attrs.get("runs"), (str, bytes)):
            ap.exit(2, "%s: no \"runs\" list of sweep points: this reads the summary of `lopt sweep`, not of `lopt compare`\n"
                    % a.summary)
        runs = json.loads(f.attrs["runs"])
    table = collections.defaultdict(list)
    for i, r in enumerate(runs):
        p = r["point"]
        if "task.reparam_scale" not in p:
            ap.exit(2, "%s: run %d (%s) has no task.reparam_scale in its sweep point: this reads a sweep whose grid "
                    "has \"task.reparam_scale\" (e.g. experiments/sweeps/celo2_param_reparam.json)\n" % (a.summary, i, r["file"]))
        with h5py.File(r["file"], "r") as g:
            loss = g["train/loss"][:]
        if a.first:
            loss = loss[: a.first]
        norm = np.clip(np.nan_to_num(loss, nan=cap, posinf=cap, neginf=cap), 0.0, cap)
        table[(p.get("@name", "run"), float(p["task.reparam_scale"]))].append(float(norm.mean()))
    names = sorted({k[0] for k in table})
    scales = sorted({k[1] for k in table})
    print("| s | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for s in scales:
        print("| %g | " % s + " | ".join("%.4f" % np.mean(table[(n, s)]) for n in names) + " |")
    print("| mean over s | " + " | ".join("%.4f" % np.mean([np.mean(table[(n, s)]) for s in scales]) for n in names) + " |")


if __name__ == "__main__":
    main()
