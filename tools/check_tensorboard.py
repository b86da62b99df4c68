#!/usr/bin/env python3
"""check_tensorboard.py - read a run's event files with TensorBoard's own reader and compare them
with its metrics.jsonl, value by value.

    python3 tools/check_tensorboard.py RUN_DIR [EVENTS_DIR]

EVENTS_DIR (default RUN_DIR) is loaded with tensorboard's EventAccumulator (which also applies
SessionLog START purges, as TensorBoard's UI does). Every numeric field of every metrics.jsonl
line must be there under its tag at its step, equal to the value rounded to float32 (the type
of Summary.Value.simple_value), and nothing else may be there. The key -> tag rule is written
out here from docs/reporting.md, not taken from anvil's code. Exit status 0 when all agree.
"""
import json
import math
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator

FIXED = {
    "loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s", "ms_per_step": "train/ms_per_step",
    "tokens_seen": "train/tokens_seen", "mfu": "train/mfu", "peak_mem_gib": "train/peak_mem_gib",
    "val_loss": "val/loss", "aux_loss": "moe/aux_loss", "z_loss": "moe/z_loss",
}
SECTIONS = (("val_", "val/"), ("mcq_", "mcq/"), ("moe_", "moe/"))
SKIP = {"step", "wall_time", "mcq_task", "expert_load"}


def tag_for(key):
    if key in FIXED:
        return FIXED[key]
    for prefix, section in SECTIONS:
        if key.startswith(prefix) and len(key) > len(prefix):
            return section + key[len(prefix):]
    return "train/" + key


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected(run_dir):
    want = {}
    with open(f"{run_dir}/metrics.jsonl") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            step = d["step"]
            for k, v in d.items():
                if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                want[(tag_for(k), step)] = f32(v)
            for layer, shares in enumerate(d.get("expert_load", [])):
                for e, s in enumerate(shares):
                    want[(f"moe/expert_load/layer{layer}/expert{e}", step)] = f32(s)
                # the imbalance: max over mean, computed from the shares as written (float32)
                vals = [f32(s) for s in shares]
                if sum(vals) > 0:
                    want[(f"moe/load_imbalance/layer{layer}", step)] = f32(max(vals) / (sum(vals) / len(vals)))
    return want


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    run_dir = sys.argv[1]
    events_dir = sys.argv[2] if len(sys.argv) == 3 else run_dir
    acc = event_accumulator.EventAccumulator(events_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    got = {}
    for tag in acc.Tags()["scalars"]:
        for e in acc.Scalars(tag):
            if (tag, e.step) in got:
                sys.exit(f"check_tensorboard: {tag} at step {e.step} appears twice")
            got[(tag, e.step)] = e.value
    want = expected(run_dir)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        sys.exit(f"check_tensorboard: {len(missing)} values of metrics.jsonl not in the event files, "
                 f"first {missing[0]}")
    if extra:
        sys.exit(f"check_tensorboard: {len(extra)} values in the event files not in metrics.jsonl, first {extra[0]}")
    bad = [(k, got[k], want[k]) for k in want
           if not (got[k] == want[k] or (math.isnan(got[k]) and math.isnan(want[k])))]
    if bad:
        k, g, w = bad[0]
        sys.exit(f"check_tensorboard: {len(bad)} values differ, first {k}: event file {g!r}, metrics.jsonl {w!r}")
    print(f"tensorboard's EventAccumulator read {len(got)} scalars in {len(acc.Tags()['scalars'])} tags from "
          f"{events_dir}: all equal to {run_dir}/metrics.jsonl")


if __name__ == "__main__":
    main()
