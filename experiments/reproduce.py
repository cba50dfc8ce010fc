#!/usr/bin/python3
"""Regenerates committed numbers and compares them (scripts/reproduce.sh is the entry point).

The manifest (experiments/reproduce.json) lists entries: name, what, commands (run from the
repository root; {out} is runs/reproduce/<name>, {lopt} the lopt binary), expected wall time, and
the numbers to compare. A number names a committed value and a regenerated one as FILE:SELECTOR:

  attr                 a root attribute of an HDF5 file (final_test_accuracy)
  group@attr           an attribute of a group (c0@mean_final_train_loss)
  contender=NAME@attr  the attribute of the comparison row (summary group) whose name is NAME
  dataset              a whole dataset, compared element by element (final_train_loss, rms)
  dataset|mean_last=N  the mean of a dataset's last N values (meta/meta_loss|mean_last=100)

and a tolerance: abs_tol (|regenerated - committed|) or rel_tol (relative to |committed|), 0 for
exact, with "why" saying where the tolerance comes from, and optionally if_platform_differs: the
tolerance (and its why) that applies instead when the regenerated file's SIMD target or CPU is not
the committed file's, or either file does not record it (the table says which). Prints one row per
number and exits 1 when one is out of tolerance, 2 for a usage error (an unknown name lists the
valid ones).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def usage_error(msg):
    print("reproduce: " + msg, file=sys.stderr)
    sys.exit(2)


def load_manifest(path):
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        usage_error("%s: %s" % (path, e))
    names = set()
    for i, e in enumerate(m.get("entries", [])):
        for key in ("name", "what", "commands", "expected_wall_s", "numbers"):
            if key not in e:
                usage_error("%s: entries[%d] lacks \"%s\"" % (path, i, key))
        if e["name"] in names:
            usage_error("%s: entry name \"%s\" appears twice" % (path, e["name"]))
        names.add(e["name"])
        for j, n in enumerate(e["numbers"]):
            for where, t in (("", n), (".if_platform_differs", n.get("if_platform_differs", {"abs_tol": 0}))):
                if ("abs_tol" in t) == ("rel_tol" in t):
                    usage_error("%s: %s numbers[%d]%s needs exactly one of abs_tol, rel_tol" % (path, e["name"], j, where))
    return m


def read_value(ref):
    import h5py
    import numpy as np
    path, _, sel = ref.partition(":")
    if not sel:
        raise ValueError("%s: no selector after the file name" % ref)
    if not os.path.exists(path):
        raise ValueError("%s does not exist" % path)
    with h5py.File(path, "r") as f:
        reducer = None
        if "|" in sel:
            sel, reducer = sel.split("|", 1)
        if "@" in sel:
            where, attr = sel.split("@", 1)
            if where.startswith("contender="):
                name = where[len("contender="):]
                groups = [g for g in f.values() if isinstance(g, h5py.Group) and g.attrs.get("name") == name]
                if not groups:
                    raise ValueError("%s: no comparison row named %s" % (path, name))
                obj = groups[0]
            else:
                obj = f[where]
            if attr not in obj.attrs:
                raise ValueError("%s: %s has no attribute %s" % (path, where, attr))
            return float(obj.attrs[attr])
        if sel in f.attrs:
            return float(f.attrs[sel])
        if sel in f:
            data = np.asarray(f[sel][()], dtype=float)
            if reducer:
                kind, _, n = reducer.partition("=")
                if kind != "mean_last":
                    raise ValueError("%s: unknown reducer %s (valid: mean_last=N)" % (ref, kind))
                return float(np.mean(data.reshape(-1)[-int(n):]))
            return data.reshape(-1)
        raise ValueError("%s: no attribute or dataset %s" % (path, sel))


def platform(ref):
    """The arithmetic platform a result file records: (SIMD target, CPU), None for either it lacks.

    The SIMD target is the root attribute simd_target; the CPU is the root attribute machine without
    its core and thread counts ("AMD EPYC (AuthenticAMD family 25 model 17 stepping 1)"). Files written
    before lopt recorded the machine have no CPU."""
    import h5py
    path = ref.partition(":")[0]
    try:
        with h5py.File(path, "r") as f:
            got = []
            for key in ("simd_target", "machine"):
                v = f.attrs.get(key)
                got.append(v.decode() if isinstance(v, bytes) else v)
    except OSError:
        return None, None
    target, machine = got
    cpu = machine.rsplit(", ", 2)[0] if machine and machine.count(", ") >= 2 else machine
    return target, cpu


def platform_differs(committed_ref, regenerated_ref):
    """Why the regenerated number cannot be expected to equal the committed one bit for bit, or ""."""
    (t0, c0), (t1, c1) = platform(committed_ref), platform(regenerated_ref)
    if not t0 or not c0:
        return "the committed file does not record its %s" % ("SIMD target" if not t0 else "CPU")
    if not t1 or not c1:
        return "the regenerated file does not record its %s" % ("SIMD target" if not t1 else "CPU")
    if t0 != t1:
        return "SIMD target %s, committed on %s" % (t1, t0)
    if c0 != c1:
        return "CPU %s, committed on %s" % (c1, c0)
    return ""


def compare(number, out):
    import numpy as np
    sub = lambda s: s.replace("{out}", out)
    try:
        committed = read_value(sub(number["committed"]))
        regenerated = read_value(sub(number["regenerated"]))
    except (ValueError, OSError, KeyError) as e:
        return None, None, None, False, str(e), tolerance_text(number)
    # Another SIMD target or CPU (OpenBLAS and oneDNN pick their kernels per CPU) rounds differently:
    # the number's own tolerance for that case, when it states one; also when a file does not say.
    differs = platform_differs(sub(number["committed"]), sub(number["regenerated"]))
    if differs and "if_platform_differs" in number:
        number = dict(number_tolerance(number["if_platform_differs"]), name=number["name"])
    else:
        differs = ""
    a = np.atleast_1d(np.asarray(committed, dtype=float))
    b = np.atleast_1d(np.asarray(regenerated, dtype=float))
    if a.shape != b.shape:
        return committed, regenerated, None, False, "shapes differ: %s vs %s" % (a.shape, b.shape), tolerance_text(number, differs)
    diff = np.abs(b - a)
    both_nan = np.isnan(a) & np.isnan(b)
    diff[both_nan] = 0.0
    if "abs_tol" in number:
        worst = float(np.max(diff)) if diff.size else 0.0
        ok = worst <= number["abs_tol"]
    else:
        rel = diff / np.maximum(np.abs(a), 1e-300)
        rel[both_nan] = 0.0
        worst = float(np.max(rel)) if rel.size else 0.0
        ok = worst <= number["rel_tol"]
    if math.isnan(worst):
        ok = False
    return committed, regenerated, worst, ok, "", tolerance_text(number, differs)


def tolerance_text(number, differs=""):
    tol = ("abs %g" % number["abs_tol"]) if "abs_tol" in number else ("rel %g" % number["rel_tol"])
    return tol + (" (" + differs + ")" if differs else "")


def number_tolerance(t):
    return {k: v for k, v in t.items() if k in ("abs_tol", "rel_tol", "why")}


def fmt(v):
    import numpy as np
    if v is None:
        return "-"
    if isinstance(v, np.ndarray):
        return "[%d values]" % v.size
    return "%.6g" % v


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="entries to run (all: every entry; cheap: those marked cheap)")
    p.add_argument("--list", action="store_true", help="list the entries and their expected wall time")
    p.add_argument("--manifest", default=os.path.join(ROOT, "experiments/reproduce.json"))
    p.add_argument("--out", default=os.path.join("runs", "reproduce"), help="folder for the regenerated files")
    p.add_argument("--lopt", default=os.path.join(os.environ.get("LOPT_BUILD_DIR", "build"), "lopt"))
    p.add_argument("--compare-only", action="store_true", help="compare existing regenerated files, run nothing")
    p.add_argument("--resume", action="store_true",
                   help="keep what an interrupted run of these entries left in --out: compare and sweep reuse "
                        "their finished runs (same resolved config and inputs), so a long entry can span sessions; "
                        "the entry's wall time then counts this invocation only")
    a = p.parse_args()
    os.chdir(ROOT)
    m = load_manifest(a.manifest)
    entries = {e["name"]: e for e in m["entries"]}
    if a.list or not a.names:
        total = 0
        for e in m["entries"]:
            total += e["expected_wall_s"]
            print("%-22s %8s  %s%s" % (e["name"], "%.0f min" % (e["expected_wall_s"] / 60.0), e["what"],
                                       "  [cheap]" if e.get("cheap") else ""))
        print("%d entries, %d numbers, expected wall time %.1f h on 2 cores" %
              (len(m["entries"]), sum(len(e["numbers"]) for e in m["entries"]), total / 3600.0))
        return 0 if a.list else 2
    if a.names == ["all"]:
        chosen = list(entries)
    elif a.names == ["cheap"]:
        chosen = [n for n, e in entries.items() if e.get("cheap")]
    else:
        unknown = [n for n in a.names if n not in entries]
        if unknown:
            usage_error("unknown entr%s %s (valid: all, cheap, %s)" %
                        ("y" if len(unknown) == 1 else "ies", ", ".join(unknown), ", ".join(entries)))
        chosen = a.names
    rows, failed, within = [], 0, 0
    t_all = time.time()
    for name in chosen:
        e = entries[name]
        out = os.path.join(a.out, name)
        wall = 0.0
        if not a.compare_only:
            if not a.resume:
                shutil.rmtree(out, ignore_errors=True)
                if os.path.exists(out + ".log"):
                    os.remove(out + ".log")
            os.makedirs(out, exist_ok=True)
            t0 = time.time()
            for cmd in e["commands"]:
                cmd = cmd.replace("{out}", out).replace("{lopt}", a.lopt)
                print("reproduce %s: %s" % (name, cmd), flush=True)
                # Beside the folder, not in it: a command may recreate its output folder (run.sh does).
                with open(out + ".log", "a") as log:
                    rc = subprocess.call(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT)
                if rc != 0:
                    print("reproduce %s: the command failed (exit %d); see %s.log" % (name, rc, out), file=sys.stderr)
                    failed += 1
                    break
            wall = time.time() - t0
        for n in e["numbers"]:
            committed, regenerated, worst, ok, err, tol = compare(n, out)
            failed += 0 if ok else 1
            within += 1 if ok else 0
            rows.append((name, n["name"], fmt(committed), fmt(regenerated), "-" if worst is None else "%.3g" % worst, tol,
                         "yes" if ok else "NO" + (" (" + err + ")" if err else ""), "%.0f s" % wall))
    print()
    print("| entry | number | committed | regenerated | difference | tolerance | within | entry wall |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\n%d of %d numbers within tolerance; %.0f s in all" % (within, len(rows), time.time() - t_all))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
