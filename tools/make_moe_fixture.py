#!/usr/bin/env python3
"""make_moe_fixture.py - a synthetic MoE run directory for anvil's report tests.

Writes tests/fixtures/report/moe-run/metrics.jsonl (or --out DIR): 40 steps of the keys an MoE
run will log (docs/reporting.md): the dense keys plus aux_loss, z_loss, mfu, peak_mem_gib,
wall_time and expert_load (3 layers x 4 experts: each layer's shares of routed tokens, summing
to 1), validation loss every 10 steps and one mcq evaluation. The numbers are made up (smooth
curves, layer 0 drifting out of balance); they exercise the code paths, not a real model.
Deterministic; no dependencies:
    python3 tools/make_moe_fixture.py
"""
import argparse
import json
import math
import os

STEPS, LAYERS, EXPERTS, TOKENS_PER_STEP = 40, 3, 4, 4096


def shares(step, layer):
    # layer 0 drifts towards expert 0; the others stay near uniform with a slow wobble
    w = []
    for e in range(EXPERTS):
        x = 1.0 + 0.15 * math.sin(0.3 * step + 1.7 * e + layer)
        if layer == 0 and e == 0:
            x += 1.5 * step / STEPS
        w.append(x)
    s = sum(w)
    return [round(v / s, 6) for v in w]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/report/moe-run")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.jsonl"), "w") as f:
        for step in range(1, STEPS + 1):
            line = {
                "step": step,
                "loss": round(6.0 + 4.5 * math.exp(-step / 12), 6),
                "lr": float("%.6e" % (3e-4 * min(1.0, step / 5))),
                "grad_norm": round(0.5 + 1.5 * math.exp(-step / 8), 6),
                "tokens_per_s": round(250000.0 + 1000 * math.sin(step), 1),
                "ms_per_step": round(1000.0 * TOKENS_PER_STEP / 250000.0, 2),
                "tokens_seen": step * TOKENS_PER_STEP,
                "mfu": round(0.41 + 0.01 * math.cos(step), 6),
                "peak_mem_gib": round(30.5 + 0.01 * step, 4),
                "aux_loss": round(0.01 + 0.004 * step / STEPS, 6),
                "z_loss": round(0.001 * math.exp(-step / 20), 6),
                "wall_time": 1764633600.0 + 0.02 * step,
                "expert_load": [shares(step, l) for l in range(LAYERS)],
            }
            if step % 10 == 0:
                line["val_loss"] = round(line["loss"] + 0.3, 6)
            if step == STEPS:
                line.update({"mcq_task": "piqa", "mcq_items": 100, "mcq_acc": 0.52, "mcq_acc_norm": 0.55})
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
