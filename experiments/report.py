#!/usr/bin/python3
"""Writes a static HTML report of lopt result files: one page per file plus an index.

Usage: report.py FILE.h5 [FILE.h5 ...] -o DIR

For each file (a comparison, sweep, continual pre-training run, meta-training log or single training
run, told apart by its "kind" attribute) DIR/<name>/index.html holds the figure (drawn by plot.py),
the table of results, for a comparison the tuning grid of every tuned contender with the chosen
point marked, the resolved config (collapsed), and the SIMD target and machine the runs recorded.
DIR/index.html links the pages. Pure static files: no scripts from elsewhere, no server.
Exit 2 when a file is missing or not a lopt result (the message names the file and what is missing).
Needs Debian's python3-h5py and python3-matplotlib.
"""
import argparse
import glob
import html
import json
import math
import os
import sys

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot  # noqa: E402

KINDS = ("compare", "sweep", "cpt", "meta_train", "train", "coord_check")

CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; }
td.name, th.name { text-align: left; }
td.chosen { background: #d8f0d8; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
.meta { color: #555; font-size: 14px; }
"""


class NotAResult(Exception):
    pass


def text(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def num(x, digits=4):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return html.escape(str(x))
    if math.isnan(v):
        return "—"
    return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}".rstrip("0").rstrip(".")


def page(title, body):
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def details(summary, content):
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(content)}</pre></details>"


def table(header, rows, classes=None):
    out = ["<table><tr>" + "".join(f"<th class=\"{'name' if i == 0 else ''}\">{h}</th>" for i, h in enumerate(header)) + "</tr>"]
    for r, row in enumerate(rows):
        cells = []
        for i, c in enumerate(row):
            cls = (classes[r][i] if classes else "") or ("name" if i == 0 else "")
            cells.append(f"<td class=\"{cls}\">{c}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def run_files_meta(files):
    """SIMD targets and machines recorded by run files."""
    targets, machines = set(), set()
    for p in files:
        try:
            with h5py.File(p, "r") as f:
                if "simd_target" in f.attrs:
                    targets.add(text(f.attrs["simd_target"]))
                machines.add(text(f.attrs["machine"]) if "machine" in f.attrs else "not recorded (written before lopt recorded it)")
        except OSError:
            continue
    return targets, machines


def provenance(targets, machines, nfiles):
    if not nfiles:
        return "<p class=\"meta\">No run files found beside the summary: SIMD target and machine unknown.</p>"
    return (f"<p class=\"meta\" id=\"provenance\">SIMD target: {html.escape(', '.join(sorted(targets)) or 'not recorded')}; "
            f"machine: {html.escape('; '.join(sorted(machines)))} ({nfiles} run files)</p>")


def compare_body(path, f):
    cfg = json.loads(text(f.attrs["config"]))
    summary = json.loads(text(f.attrs["summary"]))
    metric = summary[0].get("report_metric", "test_accuracy") if summary else "test_accuracy"
    rows = []
    for s in summary:
        chosen = "— (untuned)" if not s.get("tuned") else f"lr {num(s.get('best_lr'))}, {html.escape(s.get('schedule', ''))}"
        per_seed = " / ".join(num(v) for v in s.get("final_train_loss", []))
        rows.append([html.escape(s["name"]), str(s.get("tuning_runs", 0)), chosen,
                     f"{num(s.get('mean_final_train_loss'))} ± {num(s.get('std_final_train_loss'))}", per_seed,
                     f"{num(s.get('mean_final_' + metric))} ± {num(s.get('std_final_' + metric))}"])
    body = ["<h2>Results on the report seeds</h2>",
            table(["contender", "tuning runs", "chosen on the tuning seeds", "final training loss", "per report seed",
                   html.escape(metric.replace("_", " "))], rows)]
    body.append("<h2>Tuning grids</h2><p>Mean final training loss over the tuning seeds of every candidate; the chosen one is marked.</p>")
    for i in range(int(f.attrs["contenders"])):
        g = f[f"c{i}"]
        if "tune_lr" not in g:
            continue
        lrs, sched, score = g["tune_lr"][:], g["tune_schedule"][:].astype(int), g["tune_score"][:]
        schedules = json.loads(text(g.attrs["schedules"]))
        best_lr, best_sched = float(g.attrs["best_lr"]), json.loads(text(g.attrs.get("best_schedule", "null")))
        grid_lrs = sorted(set(float(x) for x in lrs))
        cells, cls = [], []
        for lr in grid_lrs:
            row, crow = [num(lr)], [""]
            for k, sp in enumerate(schedules):
                sel = [j for j in range(len(lrs)) if float(lrs[j]) == lr and sched[j] == k]
                v = score[sel[0]] if sel else float("nan")
                is_best = lr == best_lr and sp == best_sched
                row.append(("chosen: " if is_best else "") + ("diverged" if sel and not math.isfinite(v) else num(v)))
                crow.append("chosen" if is_best else "")
            cells.append(row)
            cls.append(crow)
        body.append(f"<h3 class=\"grid\">{html.escape(text(g.attrs['name']))}</h3>")
        body.append(table([html.escape(text(g.attrs.get("lr_key", "lr")))] +
                          [html.escape(plot_schedule_name(sp)) for sp in schedules], cells, cls))
    out_dir = cfg.get("output_dir", "")
    files = sorted(glob.glob(os.path.join(out_dir, "*.h5"))) if out_dir else []
    return body, cfg, files


def plot_schedule_name(sp):
    t = sp.get("type", "?")
    if t == "warmup_cosine":
        return f"warmup {sp.get('warmup_fraction', 0) * 100:g}% + cosine to {sp.get('final_fraction', 0):g}"
    return t


def sweep_body(path, f):
    cfg = json.loads(text(f.attrs["config"]))
    runs = json.loads(text(f.attrs["runs"]))
    rows = []
    for r in runs:
        point = {k: v for k, v in r.get("point", {}).items() if k != "optimizer"}
        rows.append([html.escape(json.dumps(point, sort_keys=True)), num(r.get("final_train_loss")),
                     num(r.get("final_test_accuracy", r.get("final_test_loss", float("nan"))))])
    files = [r["file"] for r in runs if "file" in r]
    return ["<h2>Runs</h2>", table(["grid point", "final training loss", "final test metric"], rows)], cfg, files


def cpt_body(path, f):
    cfg = json.loads(text(f.attrs["config"]))
    keys = sorted(k for k in f.attrs if k.startswith(("final_", "forgetting_", "phase0_end_", "tokens_per_s")))
    rows = [[html.escape(k), num(f.attrs[k])] for k in keys]
    return ["<h2>Numbers</h2>", table(["quantity", "value"], rows)], cfg, [path]


def meta_train_body(path, f):
    cfg = json.loads(text(f.attrs["config"]))
    keys = [k for k in ("outer_steps_done", "skipped_estimates", "inner_steps_per_second", "outer_steps_per_hour",
                        "wall_time", "outer_optimizer", "theta") if k in f.attrs]
    rows = [[html.escape(k), num(f.attrs[k]) if k not in ("outer_optimizer", "theta") else html.escape(text(f.attrs[k]))]
            for k in keys]
    loss = f["meta/meta_loss"][:]
    if len(loss):
        rows.append(["meta-loss, mean of the last 100 steps", num(float(plot.np.nanmean(loss[-100:])))])
    return ["<h2>Meta-training</h2>", table(["quantity", "value"], rows)], cfg, [path]


def train_body(path, f):
    cfg = json.loads(text(f.attrs["config"]))
    keys = [k for k in ("status", "steps_completed", "final_train_loss", "final_test_loss", "final_test_accuracy",
                        "wall_time_s") if k in f.attrs]
    rows = [[html.escape(k), num(f.attrs[k]) if k != "status" else html.escape(text(f.attrs[k]))] for k in keys]
    return ["<h2>Run</h2>", table(["quantity", "value"], rows)], cfg, [path]


def coord_check_body(path, f):
    cfg = json.loads(text(f.attrs["config"]))
    return ["<p>Activation RMS per width, layer and step: see the figure.</p>"], cfg, []


BODIES = {"compare": compare_body, "sweep": sweep_body, "cpt": cpt_body, "meta_train": meta_train_body,
          "train": train_body, "coord_check": coord_check_body}


def report_file(path, out_root):
    if not os.path.exists(path):
        raise NotAResult(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise NotAResult(f"{path}: not an HDF5 file ({e})")
    with f:
        if "kind" not in f.attrs or "config" not in f.attrs:
            missing = [a for a in ("kind", "config") if a not in f.attrs]
            raise NotAResult(f"{path}: not a lopt result (no {' and no '.join(missing)} attribute)")
        kind = text(f.attrs["kind"])
        if kind not in BODIES:
            raise NotAResult(f"{path}: unknown kind \"{kind}\" (valid: {', '.join(BODIES)})")
        name = os.path.splitext(os.path.basename(path))[0]
        out = os.path.join(out_root, name)
        os.makedirs(out, exist_ok=True)
        try:
            body, cfg, run_files = BODIES[kind](path, f)
        except KeyError as e:
            raise NotAResult(f"{path}: a {kind} file without {e}")
    fig = os.path.join(out, "figure.png")
    draw = {"compare": lambda: plot.plot_compare(path, fig), "sweep": lambda: plot.plot_sweep(path, fig, False),
            "meta_train": lambda: plot.plot_meta_train([path], fig), "coord_check": lambda: plot.plot_coord_check(path, fig),
            "train": lambda: plot.plot_train([path], fig), "cpt": None}[kind]
    figure = ""
    if draw:
        draw()
        plot.plt.close("all")
        # A figure that fails to load says so on the browser console (the browser check reads it).
        figure = ("<img id=\"figure\" src=\"figure.png\" alt=\"figure\" "
                  "onerror=\"console.error('image failed to load: ' + this.src)\">")
    targets, machines = run_files_meta(run_files)
    configs = [details("resolved config of " + os.path.basename(path), json.dumps(cfg, indent=2))]
    for p in run_files[:200]:
        try:
            with h5py.File(p, "r") as rf:
                configs.append(details(os.path.basename(p), text(rf.attrs["config"])))
        except (OSError, KeyError):
            continue
    title = f"{name} ({kind})"
    html_text = page(title, "\n".join(
        [f"<p><a href=\"../index.html\">all reports</a></p><h1>{html.escape(title)}</h1>",
         f"<p class=\"meta\">{html.escape(path)}</p>", provenance(targets, machines, len(run_files)), figure] + body +
        ["<h2>Configs</h2>"] + configs))
    with open(os.path.join(out, "index.html.tmp"), "w") as fh:
        fh.write(html_text)
    os.replace(os.path.join(out, "index.html.tmp"), os.path.join(out, "index.html"))
    return name, kind


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--output", required=True, help="folder for the report")
    a = ap.parse_args()
    pages = []
    for p in a.files:
        try:
            pages.append(report_file(p, a.output))
        except NotAResult as e:
            print(f"report.py: {e}", file=sys.stderr)
            return 2
    items = "\n".join(f"<li><a href=\"{html.escape(n)}/index.html\">{html.escape(n)}</a> ({k})</li>" for n, k in pages)
    with open(os.path.join(a.output, "index.html"), "w") as fh:
        fh.write(page("lopt results", f"<h1>lopt results</h1><ul id=\"reports\">{items}</ul>"))
    print(f"report.py: wrote {os.path.join(a.output, 'index.html')} ({len(pages)} reports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
