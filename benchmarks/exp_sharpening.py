"""Experiment: training loss / sharpening / precision on 20-way 5-shot, side by side.

Trains a fresh controller for N episodes of 20-way 5-shot (seed split, 5 queries per class,
Adam) with one training read and evaluates it on 100 test episodes with bipolar keys:

    .venv/bin/python benchmarks/exp_sharpening.py VARIANT LR EPISODES CONTROLLER PRECISION

VARIANT: ce (cross-entropy over the per-class sums of the paper softabs attention, what
`batmann train --sim-cal cos_softabs` does), seed (the same over the seed softabs with mean/std
normalisation, `--sim-cal cos_softabs_seed`), log (negative log of the per-class attention
sums), std (paper softabs, then the seed standardisation). PRECISION: fp32 or bf16.
"""
import sys
import time

import torch
import torch.nn.functional as F

from batmann.config import EpisodeOptions, ModelConfig, TrainConfig
from batmann.data import load_image_cache
from batmann.tasks import make_sampler
from batmann.checkpoint import build_model
from batmann.memory import sharpened_attention, class_logits
from batmann.train import test
torch.manual_seed(0)
variant, lr, n, ctrl, prec = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cache = load_image_cache(32)
cfg = TrainConfig(model=ModelConfig(controller=ctrl), episodes=EpisodeOptions(), precision=prec, device="cpu", keys="bipolar")
s = make_sampler(cache, cfg.episodes, "train", 0)
m = build_model(cfg)
if prec == "bf16": m = m.to(memory_format=torch.channels_last)
opt = torch.optim.Adam(m.parameters(), lr=lr)
t0 = time.time(); losses=[]
for i in range(n):
    ep = s.sample(index=i)
    x = torch.cat([ep.support, ep.query])
    if prec == "bf16": x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec=="bf16"):
        f = m(x)
    f = f.float(); k, q = f[:100], f[100:]
    if variant == "ce":
        logits = class_logits(sharpened_attention(q, k, "cos_softabs"), ep.support_labels, 20)
    elif variant == "log":
        logits = torch.log(class_logits(sharpened_attention(q, k, "cos_softabs"), ep.support_labels, 20).clamp_min(1e-6))
    elif variant == "seed":
        logits = class_logits(sharpened_attention(q, k, "cos_softabs_seed"), ep.support_labels, 20)
    elif variant == "std":
        logits = class_logits(sharpened_attention(q, k, "cos_softabs", standardize=True), ep.support_labels, 20)
    loss = F.cross_entropy(logits, ep.query_labels)
    opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
tt = time.time()-t0
r = test(m.eval(), cfg, cache, torch.device("cpu"), 100)
print(f"{variant} lr={lr} n={n} {ctrl} {prec}: {n/tt:.2f} ep/s, loss {sum(losses[:20])/20:.3f}->{sum(losses[-20:])/20:.3f}, test {r.accuracy_pct:.2f}+-{r.ci95_pct:.2f}", flush=True)
