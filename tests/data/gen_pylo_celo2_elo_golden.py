#!/usr/bin/python3
"""Writes (or checks) tests/data/pylo_celo2_elo_golden.json by running PyLO's CELO2_naive and ELO_naive.

Four cases, three steps each, with randomly initialised networks (torch.manual_seed(0); the released
DiamondXL/celo2 and DiamondXL/elo weights cannot be downloaded here, and the maths does not depend on
them):
  celo2       Newton–Schulz on; tensors of ranks 1-4, rows > cols and rows < cols, size-1 dimensions
              ([1, 7], [5, 1]), an embedding (a param group with is_embedding=True, so AdamW);
              gradients scaled by 1e-3 ... 1e3 per tensor (the largest are clamped at 1000); weight
              decay 0.1; exp_mult 0.001 (the magnitude output is used)
  celo2_base  orthogonalize=False, weight decay 0
  celo2_1d    use_adamw_for_1d=False: vectors go through the network with the 9 unfactored groups
  elo         ELO_naive (small_fc_lopt's MetaMLP 39-32-32-2, raw decays), lr 0.01, weight decay 0.1, on
              the same tensors (no embedding: ELO has no AdamW branch)
Every gradient, parameter and state tensor is recorded, and the network's input / output of each
call in the first step.

Needs Debian's python3-torch and a PyLO source tree (Belilovsky-Lab/pylo); PyLO's imports that Debian
does not package (huggingface_hub, mup) are stood in for as in gen_pylo_golden.py.

usage: /usr/bin/python3 tests/data/gen_pylo_celo2_elo_golden.py --pylo PATH [--out FILE] [--check FILE]
--check: exit 0 when every tensor agrees with the file to 1e-6 (relative, floor 1).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_pylo_golden import install_stand_ins, tensor_json, tensors  # noqa: E402

SHAPES = [(16, 8), (6, 12), (8,), (4, 3, 5), (2, 3, 4, 5), (1, 7), (5, 1)]
EMBEDDING_SHAPE = (10, 4)
GRAD_SCALES = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3]
STEPS = 3
LR = 0.01
STATE_KEYS = ("mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v", "exp_avg", "exp_avg_sq")


def run_case(orthogonalize, weight_decay, exp_mult, adamw_for_1d):
    from pylo.models.CELO2_MLP import CELO2MLP
    from pylo.optim import CELO2_naive

    torch.manual_seed(0)
    shapes = SHAPES + [EMBEDDING_SHAPE]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    initial = [p.detach().clone() for p in params]
    net = CELO2MLP()
    groups = [{"params": params[:-1]}, {"params": params[-1:], "is_embedding": True}]
    opt = CELO2_naive(groups, lr=LR, weight_decay=weight_decay, orthogonalize=orthogonalize, exp_mult=exp_mult,
                      use_adamw_for_1d=adamw_for_1d, network=net, hf_key=None)
    io = []
    net.register_forward_hook(lambda m, inp, out: io.append((torch.cat(inp[0], -1).detach().clone(), out.detach().clone())))
    steps = []
    for s in range(STEPS):
        grads = [torch.randn(sh) * GRAD_SCALES[i % len(GRAD_SCALES)] for i, sh in enumerate(shapes)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        io.clear()
        opt.step()
        # The network runs once per learned-step tensor, in parameter order.
        learned = [i for i, p in enumerate(params) if "mom" in opt.state[p]]
        mlp_io = {str(i): {"mlp_input": tensor_json(x), "mlp_output": tensor_json(y)} for i, (x, y) in zip(learned, io)}
        state = {str(i): {k: tensor_json(opt.state[p][k]) for k in STATE_KEYS if k in opt.state[p]}
                 for i, p in enumerate(params)}
        record = {"step": s + 1, "grads": [tensor_json(g) for g in grads], "params_after": [tensor_json(p) for p in params],
                  "state_after": state}
        if s == 0:  # the features and the network's outputs of the first step (later steps: through the state)
            record["mlp_io"] = mlp_io
        steps.append(record)
    return {"param_shapes": [list(s) for s in shapes], "embedding_index": len(shapes) - 1,
            "options": {"lr": LR, "weight_decay": weight_decay, "orthogonalize": orthogonalize, "exp_mult": exp_mult,
                        "use_adamw_for_1d": adamw_for_1d},
            "initial_params": [tensor_json(t) for t in initial], "steps": steps,
            "network": {k: tensor_json(v) for k, v in net.state_dict().items()}}


def run_elo():
    from pylo.models.Meta_MLP import MetaMLP
    from pylo.optim import ELO_naive

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    initial = [p.detach().clone() for p in params]
    net = MetaMLP(39, 32, 1)
    opt = ELO_naive(params, lr=LR, weight_decay=0.1, network=net, hf_key=None)
    io = []
    net.register_forward_hook(lambda m, inp, out: io.append((inp[0].detach().clone(), out.detach().clone())))
    steps = []
    for s in range(STEPS):
        grads = [torch.randn(sh) * GRAD_SCALES[i % len(GRAD_SCALES)] for i, sh in enumerate(SHAPES)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        io.clear()
        opt.step()
        state = {str(i): {k: tensor_json(opt.state[p][k]) for k in STATE_KEYS if k in opt.state[p]}
                 for i, p in enumerate(params)}
        record = {"step": s + 1, "grads": [tensor_json(g) for g in grads], "params_after": [tensor_json(p) for p in params],
                  "state_after": state}
        if s == 0:
            record["mlp_io"] = {str(i): {"mlp_input": tensor_json(x), "mlp_output": tensor_json(y)} for i, (x, y) in enumerate(io)}
        steps.append(record)
    return {"param_shapes": [list(s) for s in SHAPES], "options": {"lr": LR, "weight_decay": 0.1},
            "initial_params": [tensor_json(t) for t in initial], "steps": steps,
            "network": {"network." + k: tensor_json(v) for k, v in net.network.state_dict().items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylo", required=True, help="a PyLO source tree (the folder holding the pylo package)")
    ap.add_argument("--check", help="golden file to compare with")
    ap.add_argument("--out", help="write the cases here")
    args = ap.parse_args()
    sys.path.insert(0, args.pylo)
    install_stand_ins()
    cases = {"celo2": run_case(True, 0.1, 0.001, True), "celo2_base": run_case(False, 0.0, 0.0, True),
             "celo2_1d": run_case(True, 0.0, 0.0, False), "elo": run_elo()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"description": "PyLO CELO2_naive and ELO_naive with randomly initialised networks (see gen_pylo_celo2_elo_golden.py)",
                       "pylo_repo": "Belilovsky-Lab/pylo", "torch": torch.__version__, "cases": cases}, f)
    if args.check:
        with open(args.check) as f:
            theirs = dict(tensors(json.load(f)["cases"]))
        ours = dict(tensors(cases))
        worst = 0.0
        for p, t in theirs.items():
            if p not in ours or ours[p]["shape"] != t["shape"]:
                worst = float("inf")
                continue
            a, b = torch.tensor(ours[p]["data"], dtype=torch.float64), torch.tensor(t["data"], dtype=torch.float64)
            if a.numel():
                worst = max(worst, ((a - b).abs() / b.abs().clamp(min=1.0)).max().item())
        print(f"{len(theirs)} golden tensors, worst difference {worst:.3g} (relative, floor 1)")
        return 0 if worst <= 1e-6 and set(ours) == set(theirs) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
