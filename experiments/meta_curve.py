#!/usr/bin/python3
"""The meta-compute curve: held-out loss of a meta-training's theta snapshots against the inner steps
of meta-training that produced them, with tuned baselines as horizontal lines.

Two steps around `lopt compare` (which runs, tunes, reuses finished runs and resumes):

  meta_curve.py config --meta DIR --eval FILE -o CURVE.json
      writes a compare config: one contender per snapshot of DIR (snapshots/theta_step<N>.safetensors;
      the latest theta.safetensors is first copied there as theta_step<outer steps done>, so a resumed run
      cannot change a finished point), run as meta-trained (no tuning), plus the baselines of FILE
      (tuned by compare on the tuning seeds), on FILE's task and held-out seeds; the latest snapshot, and
      those named by --tune-at N, also with their lr tuned like the baselines. --also DIR2 adds
      another meta-training's latest theta with its lr tuned (e.g. Celo2-base beside Celo2);
      --min-step N leaves out snapshots before outer step N; --max-step N ends the curve at the
      snapshot of step N (tuned there too) instead of freezing the latest theta.
  build/lopt compare --config CURVE.json --threads 1
      (when CURVE.h5 exists, config also prints the `--only` command that runs just the contenders it
      lacks and keeps its other rows: new snapshots added on a machine without the old runs)
  meta_curve.py plot --summary CURVE.h5 --meta DIR -o CURVE.png
      draws mean final training loss (± std over the held-out seeds) against inner steps of
      meta-training, baselines as lines, and prints the table (markdown).

The eval FILE is JSON: {"base": {...compare base...}, "seeds": [...], "tuning_seeds": [...],
"baselines": [...compare contenders...], "tune_final": {"lr_grid": [...]}} ("tune_final"
optional: also the latest theta with its lr tuned like the baselines).
Bad input: a one-line error naming the file and key, exit 2.
"""
import argparse
import json
import os
import re
import sys

SNAP = re.compile(r"^theta_step(\d+)\.safetensors$")


def usage_error(msg):
    print("meta_curve.py: " + msg, file=sys.stderr)
    sys.exit(2)


def read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        usage_error("cannot read the %s %s: %s" % (what, path, e.strerror))
    except json.JSONDecodeError as e:
        usage_error("%s: not valid JSON (%s)" % (path, e))


def meta_run(meta_dir):
    """(learned optimizer config, outer steps done, {outer step: cumulative inner steps})."""
    import h5py
    import numpy as np
    h5 = os.path.join(meta_dir, "meta_train.h5")
    if not os.path.exists(h5):
        usage_error("%s: no meta_train.h5 (--meta must be a `lopt meta-train` output folder)" % meta_dir)
    with h5py.File(h5, "r") as f:
        cfg = json.loads(f.attrs["config"])
        done = int(f.attrs["outer_steps_done"])
        steps = np.asarray(f["meta/step"][:], dtype=np.int64)
        inner = np.asarray(f["meta/inner_steps"][:], dtype=np.int64)
    return cfg["lopt"], done, dict(zip(steps.tolist(), inner.tolist()))


def continued_at(meta_dir):
    """Outer steps at which the run continued from its outputs after losing its resume state."""
    import h5py
    with h5py.File(os.path.join(meta_dir, "meta_train.h5"), "r") as f:
        v = f.attrs.get("continued_from_outputs_at")
    return json.loads(v.decode() if isinstance(v, bytes) else v) if v is not None else []


def freeze_latest(meta_dir, done):
    """Copies the latest theta to snapshots/theta_step<done>.safetensors, so that the curve's config names a
    file that a resumed meta-training does not overwrite (compare reuses a finished run by its config, which
    holds the path, not the file's contents). The run may checkpoint meanwhile: copy, then check that
    outer_steps_done did not move; retried a few times. Returns the outer step frozen, or None."""
    import shutil
    theta = os.path.join(meta_dir, "theta.safetensors")
    if not os.path.exists(theta):
        return None
    sdir = os.path.join(meta_dir, "snapshots")
    os.makedirs(sdir, exist_ok=True)
    for _ in range(5):
        dst = os.path.join(sdir, "theta_step%d.safetensors" % done)
        if os.path.exists(dst):
            return done
        tmp = dst + ".tmp"
        shutil.copyfile(theta, tmp)
        _, now, _ = meta_run(meta_dir)
        if now == done:
            os.replace(tmp, dst)
            return done
        os.remove(tmp)
        done = now
    usage_error("%s: the run checkpoints faster than its theta can be copied; stop it or retry" % meta_dir)


def snapshots(meta_dir, done, max_step=None):
    """([(outer step, checkpoint path)] ascending, outer steps done); the latest theta is frozen as a snapshot
    first (done may have moved on meanwhile), unless max_step asks for snapshots up to an earlier step."""
    if max_step is None:
        done = freeze_latest(meta_dir, done) or done
    out = []
    sdir = os.path.join(meta_dir, "snapshots")
    if os.path.isdir(sdir):
        for name in os.listdir(sdir):
            m = SNAP.match(name)
            if m:
                out.append((int(m.group(1)), os.path.join(sdir, name)))
    out.sort()
    if max_step is not None:
        out = [o for o in out if o[0] <= max_step]
        if not out or out[-1][0] != max_step:
            usage_error("%s: no snapshot at outer step %d (--max-step names a file snapshots/theta_step<N>.safetensors)"
                        % (meta_dir, max_step))
        done = max_step
    if not out:
        usage_error("%s: no theta snapshots and no theta.safetensors" % meta_dir)
    return out, done


def make_config(a):
    ev = read_json(a.eval, "evaluation file")
    for key in ("base", "seeds", "tuning_seeds", "baselines"):
        if key not in ev:
            usage_error("%s: missing key \"%s\" (see meta_curve.py --help)" % (a.eval, key))
    if not isinstance(ev["baselines"], list) or not all(isinstance(c, dict) and "name" in c for c in ev["baselines"]):
        usage_error("%s: \"baselines\" must be a list of compare contenders ({name, optimizer, lr_grid})" % a.eval)
    grid = None
    if "tune_final" in ev:
        grid = ev["tune_final"].get("lr_grid") if isinstance(ev["tune_final"], dict) else None
        if not isinstance(grid, list) or not grid:
            usage_error("%s: \"tune_final\" needs a non-empty \"lr_grid\"" % a.eval)
    if a.also and not grid:
        usage_error("%s: --also needs \"tune_final\": {\"lr_grid\": [...]} in the evaluation file" % a.eval)
    lopt, done, _ = meta_run(a.meta)
    ltype = lopt.get("type")
    # --also folders, read before anything is frozen: a learned-optimizer type twice would name two
    # contenders alike ("<type>@<step>_tuned")
    also = []
    for other in a.also or []:
        m = re.match(r"^(.*)@(\d+)$", other)
        other, at = (m.group(1), int(m.group(2))) if m else (other, None)
        also.append((other, at) + meta_run(other)[:2])
    types = [ltype] + [o[2].get("type") for o in also]
    if len(set(types)) != len(types):
        usage_error("two contenders share a name: --meta and --also, or two --also, are the same learned-optimizer type")
    if a.tune_at and not grid:
        usage_error("%s: --tune-at needs \"tune_final\": {\"lr_grid\": [...]} in the evaluation file" % a.eval)
    contenders = []
    snaps, done = snapshots(a.meta, done, a.max_step)
    if a.min_step is not None:
        snaps = [s for s in snaps if s[0] >= a.min_step]
        if not snaps:
            usage_error("%s: no snapshot at or after outer step %d (--min-step)" % (a.meta, a.min_step))
    steps = [s for s, _ in snaps]
    for step in a.tune_at or []:
        if step not in steps:
            usage_error("%s: --tune-at %d: no snapshot of the curve at that outer step (it has %s)"
                        % (a.meta, step, ", ".join(str(s) for s in steps)))
    for step, path in snaps:
        opt = {"type": ltype, "checkpoint": path}
        if "lr" in lopt:
            opt["lr"] = lopt["lr"]
        contenders.append({"name": "%s@%d" % (ltype, step), "optimizer": opt})
    if grid:
        # the latest snapshot, and those of --tune-at, also with their lr tuned like the baselines
        for step in sorted(set(a.tune_at or []) | {steps[-1]}):
            opt = dict(contenders[steps.index(step)]["optimizer"])
            opt.pop("lr", None)  # the grid sets it
            contenders.append({"name": "%s@%d_tuned" % (ltype, step), "optimizer": opt, "lr_grid": grid})
    for other, at, olopt, odone in also:
        # another meta-training's latest theta (frozen like this one's), or its snapshot at DIR@N, lr tuned
        # like the baselines
        osnaps, _ = snapshots(other, odone, at)
        contenders.append({"name": "%s@%d_tuned" % (olopt.get("type"), osnaps[-1][0]),
                           "optimizer": {"type": olopt.get("type"), "checkpoint": osnaps[-1][1]}, "lr_grid": grid})
    names = {c["name"] for c in contenders}
    for c in ev["baselines"]:
        if c["name"] in names:
            usage_error("%s: baseline name \"%s\" clashes with a snapshot contender" % (a.eval, c["name"]))
    stem = os.path.splitext(a.out)[0]
    cfg = {"base": ev["base"], "seeds": ev["seeds"], "tuning_seeds": ev["tuning_seeds"],
           "contenders": contenders + ev["baselines"],
           "output_dir": a.runs or os.path.join("runs", "meta_curve", os.path.basename(stem)),
           "summary": stem + ".h5"}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=1)
        f.write("\n")
    os.replace(tmp, a.out)
    print("meta_curve: %d learned contenders (%s) + %d baselines -> %s" %
          (len(contenders), ", ".join(c["name"] for c in contenders), len(ev["baselines"]), a.out))
    new = summary_newcomers(cfg)
    if new:  # their run files may be gone (another machine): compare --only runs just these
        print("meta_curve: not in %s yet: %s; to run only those and keep the other rows:\n  build/lopt compare --config %s %s "
              "--threads 1" % (cfg["summary"], ", ".join(new), a.out, " ".join("--only " + n for n in new)))
    return 0


def summary_newcomers(cfg):
    """Contenders of a compare config that its existing summary has no row for ([] without a summary)."""
    if not os.path.exists(cfg["summary"]):
        return []
    import h5py
    with h5py.File(cfg["summary"], "r") as f:
        rows = f.attrs.get("summary")
    have = {r["name"] for r in json.loads(rows.decode() if isinstance(rows, bytes) else rows)} if rows is not None else set()
    return [c["name"] for c in cfg["contenders"] if c["name"] not in have]


def plot(a):
    import h5py
    lopt, _, inner = meta_run(a.meta)
    rows, lines = [], []
    with h5py.File(a.summary, "r") as f:
        for key in sorted(f.keys(), key=lambda k: int(k[1:]) if k[1:].isdigit() else 0):
            g = f[key]
            name = g.attrs["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            mean, std = float(g.attrs["mean_final_train_loss"]), float(g.attrs["std_final_train_loss"])
            acc = g.attrs.get("mean_final_test_accuracy")
            m = re.match(r"^([A-Za-z0-9_]+)@(\d+)(_tuned)?$", name)
            if m and m.group(1) == lopt.get("type"):  # this run's snapshots; --also ones are drawn as lines
                step = int(m.group(2))
                rows.append((step, inner.get(step, float("nan")), name, mean, std, acc, bool(m.group(3))))
            elif not a.lines or name in a.lines:
                # A baseline, tuned by compare or run as shipped, or an --also theta named "..._tuned".
                tuned = int(g.attrs.get("tuning_runs", 1)) > 0
                label = name if name.endswith("_tuned") else "%s (%s)" % (name, "tuned" if tuned else "as shipped")
                lines.append((label, mean, std, acc))
    rows.sort()
    restarts = continued_at(a.meta)
    for step in restarts:
        print("note: the meta-training continued from its outputs at outer step %d (fresh outer Adam moments and "
              "unrolls; its resume state was lost)" % step)
    print("| contender | outer steps | inner steps of meta-training | final train loss (mean ± std) | test accuracy |")
    print("|---|---|---|---|---|")
    for step, n_inner, name, mean, std, acc, _ in rows:
        print("| %s | %d | %.3g | %.4f ± %.4f | %s |" % (name, step, n_inner, mean, std, "-" if acc is None else "%.4f" % acc))
    for name, mean, std, acc in lines:
        print("| %s | - | - | %.4f ± %.4f | %s |" % (name, mean, std, "-" if acc is None else "%.4f" % acc))
    if a.output:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        # Left: the whole curve (log loss: early snapshots sit orders of magnitude above the baselines).
        # Right: linear, near the baselines, where the verdict is read.
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        pts = [r for r in rows if not r[6]]
        ref = [m for _, m, _, _ in lines] or [r[3] for r in rows]
        low = min(ref + [r[3] for r in rows])
        spread = max(ref) - low  # from the best contender to the worst reference line
        lo, hi = 0.85 * low, 1.6 * max(ref)
        if spread > 0:  # no wider than the spread asks for (an LM's losses sit near 2, 0.1 apart)
            lo, hi = max(lo, low - 0.5 * spread), min(hi, max(ref) + 2 * spread)
        for k, ax in enumerate(axes):
            shown = pts if k == 0 else [r for r in pts if r[3] <= hi]
            ax.errorbar([r[1] for r in shown], [r[3] for r in shown], yerr=[r[4] for r in shown], marker="o", capsize=3,
                        label="snapshots, as meta-trained")
            tuned = [r for r in rows if r[6] and (k == 0 or r[3] <= hi)]
            if tuned:
                ax.errorbar([r[1] for r in tuned], [r[3] for r in tuned], yerr=[r[4] for r in tuned], marker="s",
                            capsize=3, linestyle=":" if len(tuned) > 1 else "none", label="snapshots, lr tuned")
            for j, step in enumerate(restarts):
                ax.axvline(inner.get(step, float("nan")), color="0.5", linestyle=":", linewidth=1,
                           label="continued without resume state" if j == 0 else None)
            for i, (name, mean, std, _) in enumerate(lines):
                color = "C%d" % (i + 2)
                ax.axhline(mean, color=color, linestyle="--", label=name)
                ax.axhspan(mean - std, mean + std, color=color, alpha=0.15)
            ax.set_xscale("log")
            ax.set_xlabel("inner steps of meta-training")
            if k == 0:
                ax.set_yscale("log")
                ax.set_ylabel("final training loss (held-out seeds)")
                ax.set_title(a.title or "meta-compute curve")
            else:
                ax.set_ylim(lo, hi)
                ax.set_title("near the tuned baselines (linear)")
                if pts:
                    ax.set_xlim(axes[0].get_xlim())
            ax.legend(fontsize=7)
        fig.tight_layout()
        tmp = a.output + ".tmp.png"
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, a.output)
        print("meta_curve: wrote %s" % a.output)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    c = sub.add_parser("config", help="write the compare config of a meta-training's snapshots")
    c.add_argument("--meta", required=True, help="the `lopt meta-train` output folder")
    c.add_argument("--eval", required=True, help="the evaluation file (task, seeds, baselines)")
    c.add_argument("-o", "--out", required=True, help="compare config to write (its summary goes beside it, .h5)")
    c.add_argument("--runs", help="folder for the run files (default runs/meta_curve/<name>)")
    c.add_argument("--also", action="append", metavar="DIR[@N]",
                   help="another meta-training folder: its latest theta (or its snapshot at outer step N) joins, "
                        "lr tuned (repeatable)")
    c.add_argument("--max-step", type=int, help="the curve ends at this snapshot (it must exist; nothing is frozen)")
    c.add_argument("--min-step", type=int, help="leave out snapshots before this outer step (costly evaluations)")
    c.add_argument("--tune-at", type=int, action="append", metavar="N",
                   help="also tune the lr of the snapshot at outer step N (repeatable; the latest is always tuned)")
    q = sub.add_parser("plot", help="table and figure from the compare summary")
    q.add_argument("--summary", required=True)
    q.add_argument("--meta", required=True)
    q.add_argument("-o", "--output", help="PNG to write")
    q.add_argument("--title")
    q.add_argument("--lines", action="append", metavar="NAME",
                   help="draw only these other contenders as horizontal lines (repeatable; default every one)")
    a = p.parse_args()
    if a.cmd == "config":
        return make_config(a)
    if a.cmd == "plot":
        if not os.path.exists(a.summary):
            usage_error("no summary %s (run `lopt compare` on the curve's config first)" % a.summary)
        return plot(a)
    p.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
