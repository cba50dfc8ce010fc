#!/usr/bin/python3
"""Regenerates (or checks) the tensors of tests/data/pylo_mulo_golden.json by running PyLO itself.

PyLO's AdafacLO_naive (small_fc_lopt) and MuLO_naive (muLO) take three steps on three tensors with a
randomly initialised MetaMLP; every input, output and state tensor is recorded (see
README_pylo_golden.md for what the file holds).

Needs only Debian's python3-torch and a PyLO source tree (git clone of Belilovsky-Lab/pylo at the
commit the golden file records). PyLO's two imports that Debian does not package are stood in for:
huggingface_hub's PyTorchModelHubMixin (a mixin this script never uses: the MetaMLP is built here,
not downloaded) and mup's process_param_groups (the few lines MuLO_naive calls, re-written below),
with each tensor's muP shape given explicitly (mup's `infshape`: ninf and width_mult).

usage: /usr/bin/python3 tests/data/gen_pylo_golden.py --pylo PATH/TO/pylo [--check tests/data/pylo_mulo_golden.json]
                                                      [--out FILE]
--check compares every tensor with the committed file: exit 0 when all agree to 1e-6 (relative,
floor 1) and the parameter groups are identical. On Debian 12's python3-torch 1.13.1 (x86-64,
OpenBLAS) 154 of the 180 tensors are bit-identical; the MetaMLP outputs differ in the last bit
(the BLAS kernel differs from the machine that wrote the file), 9e-8 at most.
"""
import argparse
import json
import sys
import types
from collections import OrderedDict

import torch

SHAPES = [(16, 8), (8,), (4, 3, 5)]
STEPS = 3
# muLO case: tensor 0 is matrix-like (two infinite dims) with width multiplier 2, the others vector-like.
MUP_INFSHAPE = [(2, 2.0), (1, 1.0), (1, 1.0)]


def install_stand_ins():
    hub = types.ModuleType("huggingface_hub")

    class PyTorchModelHubMixin:  # the class keywords (license=..., tags=...) are accepted and ignored
        def __init_subclass__(cls, **kwargs):
            super().__init_subclass__()

    hub.PyTorchModelHubMixin = PyTorchModelHubMixin
    sys.modules["huggingface_hub"] = hub

    mup = types.ModuleType("mup")
    mup_optim = types.ModuleType("mup.optim")

    def process_param_groups(params, **kwargs):
        # As mup.optim: a list of groups, each with lr and weight_decay filled from the kwargs.
        groups = list(params)
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            g.setdefault("lr", kwargs["lr"])
            g.setdefault("weight_decay", kwargs.get("weight_decay", 0.0))
        return groups

    mup_optim.process_param_groups = process_param_groups
    mup.optim = mup_optim
    sys.modules["mup"] = mup
    sys.modules["mup.optim"] = mup_optim


class InfShape:
    def __init__(self, ninf, width_mult):
        self._ninf, self._width_mult = ninf, width_mult

    def ninf(self):
        return self._ninf

    def width_mult(self):
        return self._width_mult


def tensor_json(t):
    t = t.detach().to(torch.float32).contiguous()
    return {"shape": list(t.shape), "data": t.flatten().tolist()}


def metamlp():
    from pylo.models.Meta_MLP import MetaMLP

    return MetaMLP(39, 32, 1)


def run_case(mup):
    from pylo.models.Meta_MLP import MetaMLP
    from pylo.optim import AdafacLO_naive, MuLO_naive

    # The random stream: parameters, then the MetaMLP's default init, then each step's gradients.
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    initial = [p.detach().clone() for p in params]
    net = metamlp()
    # AdafacLO_naive loads its MetaMLP with from_pretrained(hf_key): hand it this one instead.
    MetaMLP.from_pretrained = classmethod(lambda cls, key: net)
    if mup:
        for p, (ninf, wm) in zip(params, MUP_INFSHAPE):
            p.infshape = InfShape(ninf, wm)
        opt = MuLO_naive(params, lr=1.0, weight_decay=0.1)
    else:
        opt = AdafacLO_naive(params, lr=1.0, weight_decay=0.0)

    io = []
    net.register_forward_hook(lambda m, inp, out: io.append((inp[0].detach().clone(), out.detach().clone())))
    index = {id(p): i for i, p in enumerate(params)}
    groups = []
    for g in opt.param_groups:
        groups.append({"param_indices": [index[id(p)] for p in g["params"]], "lr": g["lr"], "weight_decay": g["weight_decay"],
                       "exp_mult": g["exp_mult"], "step_mult": g["step_mult"], "max_grad_norm": g["max_grad_norm"],
                       "momentum_decays_effective": g["initial_momentum_decays"].tolist(),
                       "rms_decays_effective": g["initial_rms_decays"].tolist(),
                       "adafactor_decays_effective": g["initial_adafactor_decays"].tolist()})
    steps = []
    for s in range(STEPS):
        grads = [torch.randn(sh) for sh in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        io.clear()
        opt.step()
        # The network runs once per tensor, in the groups' order.
        order = [i for g in groups for i in g["param_indices"]]
        mlp_io = {str(i): {"mlp_input": tensor_json(x), "mlp_output": tensor_json(y)} for i, (x, y) in zip(order, io)}
        state = {str(i): {k: tensor_json(opt.state[p][k]) for k in ("mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v")}
                 for i, p in enumerate(params)}
        steps.append({"step": s + 1, "grads": [tensor_json(g) for g in grads], "params_after": [tensor_json(p) for p in params],
                      "state_after": state, "mlp_io": mlp_io})
    return {"param_shapes": [list(s) for s in SHAPES], "initial_params": [tensor_json(t) for t in initial],
            "param_groups": groups, "steps": steps,
            "metamlp": {"network." + k: tensor_json(v) for k, v in net.network.state_dict().items()}}


def tensors(x, path=""):
    """Every {"shape", "data"} leaf of x, by path."""
    if isinstance(x, dict):
        if set(x) == {"shape", "data"}:
            yield path, x
            return
        for k, v in x.items():
            yield from tensors(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from tensors(v, f"{path}/{i}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylo", required=True, help="a PyLO source tree (the folder holding the pylo package)")
    ap.add_argument("--check", help="golden file to compare with, bit-exactly")
    ap.add_argument("--out", help="write the regenerated cases here")
    args = ap.parse_args()
    sys.path.insert(0, args.pylo)
    install_stand_ins()
    cases = {"adafaclo_no_mup": run_case(mup=False), "mulo_mup_wd": run_case(mup=True)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"pylo_repo": "Belilovsky-Lab/pylo", "torch": torch.__version__, "cases": cases}, f)
    if args.check:
        with open(args.check) as f:
            golden = json.load(f)["cases"]
        ours = dict(tensors(cases))
        theirs = dict(tensors(golden))
        bad = [p for p in theirs if p not in ours or ours[p] != theirs[p]]
        missing = [p for p in ours if p not in theirs]
        groups_ok = all(golden[c]["param_groups"] == cases[c]["param_groups"] for c in cases)
        # The MetaMLP's matmuls go through the machine's BLAS, whose kernels differ between CPUs:
        # a last-bit difference in an MLP output (and what it moves downstream) is expected, more is not.
        worst = 0.0
        for p in bad:
            if p not in ours or ours[p]["shape"] != theirs[p]["shape"]:
                worst = float("inf")
                continue
            a, b = torch.tensor(ours[p]["data"], dtype=torch.float64), torch.tensor(theirs[p]["data"], dtype=torch.float64)
            worst = max(worst, ((a - b).abs() / b.abs().clamp(min=1.0)).max().item())
        print(f"{len(theirs)} golden tensors: {len(theirs) - len(bad)} bit-identical, {len(bad)} differ by at most "
              f"{worst:.3g} (relative, floor 1); param groups {'identical' if groups_ok else 'DIFFER'}; "
              f"{len(missing)} regenerated tensors not in the golden file")
        for p in bad[:5]:
            print("  differs:", p)
        return 0 if worst <= 1e-6 and groups_ok and not missing else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
