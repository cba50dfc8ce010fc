#!/usr/bin/python3
"""The transformer LM of lopt's BM_LmTrainStep (and, with --moe, of BM_MoeTrainStep) in PyTorch (Debian python3-torch), for a side-by-side
tokens/s figure: d_model 128, 4 pre-norm blocks (LayerNorm, causal attention with rotary embeddings,
GELU MLP 4x), 4 heads, context 128, batch 32, byte-level fortunes text, AdamW.

Usage: /usr/bin/python3 bench/lm_reference.py [--steps 40] [--threads 2]
Prints the median tokens/s over the timed steps (after 5 warm-up steps)."""
import argparse
import glob
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class MoE(nn.Module):
    """Dropless top-k MoE feed-forward (softmax router, gates renormalised for k > 1, aux + z loss),
    as lopt's tasks/moe.cpp "aux" router: tokens sorted by expert, one matmul pair per expert."""

    def __init__(self, d, experts, k, hidden, shared=0):
        super().__init__()
        self.k, self.E = k, experts
        self.router = nn.Linear(d, experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(experts, hidden, d) / math.sqrt(d))
        self.b1 = nn.Parameter(torch.zeros(experts, hidden))
        self.w2 = nn.Parameter(torch.randn(experts, d, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(experts, d))
        self.shared = nn.Sequential(nn.Linear(d, shared * hidden), nn.GELU(), nn.Linear(shared * hidden, d)) if shared else None
        self.aux = 0.0

    def forward(self, h):
        B, T, d = h.shape
        x = h.reshape(B * T, d)
        logits = self.router(x)
        probs = torch.softmax(logits, -1)
        vals, idx = probs.topk(self.k, -1)
        gates = vals / vals.sum(-1, keepdim=True) if self.k > 1 else vals
        flat = idx.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        token = torch.arange(B * T).repeat_interleave(self.k)[order]
        xs, gate = x[token], gates.reshape(-1)[order]
        counts = torch.bincount(flat, minlength=self.E).tolist()
        outs, off = [], 0
        for e, c in enumerate(counts):
            if c:
                outs.append(F.linear(F.gelu(F.linear(xs[off:off + c], self.w1[e], self.b1[e])), self.w2[e], self.b2[e]))
                off += c
        y = torch.zeros_like(x).index_add(0, token, torch.cat(outs) * gate[:, None])
        if self.shared is not None:
            y = y + self.shared(x)
        f = torch.bincount(flat, minlength=self.E).float() / flat.numel()
        self.aux = 0.01 * self.E * (f * probs.mean(0)).sum() + 0.001 * torch.logsumexp(logits, -1).square().mean()
        return y.view(B, T, d)


class Block(nn.Module):
    def __init__(self, d, heads, ctx, moe=None):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.moe = MoE(d, *moe) if moe else None
        half = self.dh // 2
        ang = torch.outer(torch.arange(ctx, dtype=torch.float64),
                          10000.0 ** (-2.0 * torch.arange(half, dtype=torch.float64) / self.dh))
        self.register_buffer("cos", ang.cos().float())
        self.register_buffer("sin", ang.sin().float())
        self.register_buffer("mask", torch.full((ctx, ctx), float("-inf")).triu(1))

    def rope(self, x):
        half = self.dh // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * self.cos - x2 * self.sin, x1 * self.sin + x2 * self.cos], -1)

    def forward(self, h):
        B, T, d = h.shape
        qkv = self.qkv(self.ln1(h)).view(B, T, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        q, k, v = self.rope(qkv[0]) / math.sqrt(self.dh), self.rope(qkv[1]), qkv[2]
        att = torch.softmax(q @ k.transpose(-2, -1) + self.mask[:T, :T], -1)
        h = h + self.out((att @ v).transpose(1, 2).reshape(B, T, d))
        if self.moe is not None:
            return h + self.moe(self.ln2(h))
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))


class LM(nn.Module):
    def __init__(self, d=128, depth=4, heads=4, ctx=128, moe=None):
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.blocks = nn.ModuleList([Block(d, heads, ctx, moe) for _ in range(depth)])
        self.lnf = nn.LayerNorm(d)
        self.readout = nn.Linear(d, 256)

    def forward(self, x):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h)
        return self.readout(self.lnf(h))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--moe", default="dense", choices=["dense", "switch8", "granular16"],
                    help="switch8: 8 experts top-1; granular16: 16 experts top-4 (both FLOP-matched to dense)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    files = sorted(f for f in glob.glob("/usr/share/games/fortunes/*")
                   if os.path.isfile(f) and not os.path.islink(f) and not f.endswith((".dat", ".u8")))
    data = torch.tensor(list(b"".join(open(f, "rb").read() for f in files)), dtype=torch.long)
    moe = {"dense": None, "switch8": (8, 1, 512), "granular16": (16, 4, 128)}[args.moe]
    model = LM(moe=moe)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = 32, 128
    rates = []
    for step in range(5 + args.steps):
        t0 = time.perf_counter()
        start = torch.randint(0, data.numel() - T - 1, (B, 1))
        tok = data[start + torch.arange(T + 1)]
        logits = model(tok[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), tok[:, 1:].reshape(-1))
        if moe:
            loss = loss + sum(b.moe.aux for b in model.blocks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 5:
            rates.append(B * T / (time.perf_counter() - t0))
    rates.sort()
    print(f"{args.moe}: pytorch {torch.__version__} threads {torch.get_num_threads()}: median {rates[len(rates) // 2]:.0f} tokens/s "
          f"(min {rates[0]:.0f}, max {rates[-1]:.0f}) over {len(rates)} steps; final loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
