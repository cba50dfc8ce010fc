#!/usr/bin/python3
"""The continual pre-training study (issue: MoE CPT): writes one `lopt cpt` config per run and runs
them, resumably, `--jobs` at a time with one thread each.

Grid (CPU scale: d_model 128, 4 blocks, 4 heads, context 128, batch 32 = 4096 tokens per step):
  * models: dense (FLOP-matched), switch-sinkhorn and switch-aux (8 experts, top-1), granular-aux
    (16 experts, top-4);
  * shifts: english -> german, english -> code;
  * schedules: rewarm (re-warm + re-decay from the decayed checkpoint) and infinite (continue from the
    pre-anneal checkpoint), replay 25%;
  * replay sweep 0 / 10 / 25 / 50% (switch-sinkhorn, english -> german, rewarm);
  * re-training baselines: one phase on german with 50% english, the same total tokens;
  * muLO_M (meta-trained on MLPs) and muLO_LM (meta-trained on small transformers) against AdamW through
    the English -> German shift (muP Switch-Sinkhorn).

usage: /usr/bin/python3 experiments/cpt_study.py [--steps 750] [--jobs 2] [--only SUBSTRING] [--list]
       [--out results/cpt]
A finished run (its .h5 exists) is skipped; an interrupted one resumes from its checkpoint.
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

MODELS = {
    "dense": None,
    "switch-sinkhorn": {"experts": 8, "top_k": 1, "router": "sinkhorn"},
    "switch-aux": {"experts": 8, "top_k": 1, "router": "aux"},
    "granular-aux": {"experts": 16, "top_k": 4, "router": "aux"},
}
SCHEDULES = {
    "constant": {"type": "constant"},
    "rewarm": {"type": "rewarm", "warmup_fraction": 0.02, "final_fraction": 0.1},
    "infinite": {"type": "infinite", "warmup_fraction": 0.02, "cooldown_fraction": 0.2, "constant_fraction": 0.5,
                 "anneal_fraction": 0.1, "final_fraction": 0.1},
}


def task(moe):
    t = {"type": "transformer_lm", "width": 128, "depth": 4, "heads": 4, "context": 128, "batch_size": 32,
         "parametrization": {"type": "sp"}}
    if moe:
        t["moe"] = moe
    return t


def runs(steps, out):
    def cfg(name, model, schedule, phases):
        return name, {"task": task(MODELS[model]), "optimizer": {"type": "adamw", "lr": 3e-3, "weight_decay": 0.1},
                      "schedule": SCHEDULES[schedule], "phases": phases, "eval_corpora": ["english", "german", "code"],
                      "eval_every": max(1, steps // 15), "eval_examples": 64, "seed": 0, "checkpoint_every": 100,
                      "output": os.path.join(out, name + ".h5")}

    # Ordered so that a partial study is already a comparison: every model on English -> German first.
    for target in ("german", "code"):
        for schedule in ("rewarm", "infinite"):
            for model in MODELS:
                yield cfg(f"{model}_{target}_{schedule}_replay25", model, schedule,
                          [{"corpus": "english", "steps": steps},
                           {"corpus": target, "steps": steps, "replay_fraction": 0.25}])
        if target == "german":
            for model in MODELS:
                yield cfg(f"{model}_retrain_german", model, "rewarm",
                          [{"corpus": "german", "steps": 2 * steps, "replay_fraction": 0.5, "replay_corpus": "english"}])
    # Beyond the paper: the MLP-meta-trained muLO_M through the shift against AdamW re-warm / re-decay,
    # on the muP version of the Switch-Sinkhorn model (muP = SP at base width 128 but for the zero
    # readout and 1/d_head attention).
    mup = {"type": "mup", "base_width": 128}
    # AdamW at 3e-3 (the grid's LR, tuned on the dense muP LM) is unstable on this model in phase 0, so
    # also at 1e-3.
    for name, opt, schedule in (("adamw", {"type": "adamw", "lr": 3e-3, "weight_decay": 0.1}, "rewarm"),
                                ("adamw-lr1e-3", {"type": "adamw", "lr": 1e-3, "weight_decay": 0.1}, "rewarm"),
                                ("mulo_m", {"type": "mulo", "checkpoint": "results/checkpoints/mulo_m/theta.safetensors"}, "constant"),
                                ("mulo_lm", {"type": "mulo", "checkpoint": "results/checkpoints/mulo_lm_small/theta.safetensors"},
                                 "constant"),
                                # The equal protocol: each learned optimizer with AdamW's schedule (re-warm +
                                # re-decay) at two step multipliers, as AdamW ran at two learning rates.
                                ("mulo_m-rewarm", {"type": "mulo", "checkpoint": "results/checkpoints/mulo_m/theta.safetensors"},
                                 "rewarm"),
                                ("mulo_m-rewarm-x0.25", {"type": "mulo", "lr": 0.25,
                                                         "checkpoint": "results/checkpoints/mulo_m/theta.safetensors"}, "rewarm"),
                                ("mulo_lm-rewarm", {"type": "mulo",
                                                    "checkpoint": "results/checkpoints/mulo_lm_small/theta.safetensors"}, "rewarm"),
                                ("mulo_lm-rewarm-x0.25", {"type": "mulo", "lr": 0.25,
                                                          "checkpoint": "results/checkpoints/mulo_lm_small/theta.safetensors"},
                                 "rewarm")):
        n, c = cfg(f"mup-switch-sinkhorn_german_{name}_replay25", "switch-sinkhorn", schedule,
                   [{"corpus": "english", "steps": steps}, {"corpus": "german", "steps": steps, "replay_fraction": 0.25}])
        c["task"]["parametrization"] = mup
        c["optimizer"] = opt
        yield n, c
    for replay in (0, 10, 50):
        phases = [{"corpus": "english", "steps": steps}, {"corpus": "german", "steps": steps}]
        if replay:
            phases[1]["replay_fraction"] = replay / 100
        yield cfg(f"switch-sinkhorn_german_rewarm_replay{replay}", "switch-sinkhorn", "rewarm", phases)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=750, help="steps per phase (4096 tokens each)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--out", default="results/cpt")
    ap.add_argument("--lopt", default="build/lopt")
    args = ap.parse_args()
    os.makedirs(os.path.join(args.out, "configs"), exist_ok=True)
    todo = [(n, c) for n, c in runs(args.steps, args.out) if args.only in n]
    if args.list:
        for n, c in todo:
            print(n, "done" if os.path.exists(c["output"]) else "")
        return 0

    def run(item):
        name, c = item
        if os.path.exists(c["output"]):
            return name, 0
        path = os.path.join(args.out, "configs", name + ".json")
        with open(path, "w") as f:
            json.dump(c, f, indent=1)
        cmd = [args.lopt, "cpt", "--config", path, "--threads", "1", "-q"]
        if os.path.exists(c["output"] + ".ckpt.safetensors"):
            cmd.append("--resume")
        with open(os.path.join(args.out, "configs", name + ".log"), "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        print(name, "ok" if rc == 0 else f"failed ({rc})", flush=True)
        return name, rc

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, todo))
    return 1 if any(rc for _, rc in results) else 0


if __name__ == "__main__":
    sys.exit(main())
