#!/usr/bin/env python3
"""check_eval_lmeval.py - the real lm-evaluation-harness on tests/fixtures/eval, compared with
expected.json (the references of tests/test_eval.c and tests/cli_eval.sh, which
tools/make_eval_fixtures.py computes by reproducing lm-eval's conventions with transformers).

Needs `pip install lm_eval` (checked with 0.4.13; a virtualenv with --system-site-packages keeps
the system's torch/transformers). Runs lm-eval's own task configs (hellaswag, piqa, arc_easy,
winogrande; their YAML and utils copied, with the dataset pointed at the fixture JSONL files)
plus a "generic" task (context / choices / answer), with HFLM on each fixture model (fp32, CPU,
max_length = the models' 64), zero-shot, and compares per item the log-likelihood of every
choice and the task's acc / acc_norm / acc_bytes. Exit status 1 on any difference.

    python3 tools/check_eval_lmeval.py [--fixtures tests/fixtures/eval]
"""
import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile

import lm_eval
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

TASKS = {  # our name: (lm-eval task dir, its yaml, its task name)
    "hellaswag": ("hellaswag", "hellaswag.yaml", "hellaswag"),
    "piqa": ("piqa", "piqa.yaml", "piqa"),
    "arc": ("arc", "arc_easy.yaml", "arc_easy"),
    "winogrande": ("winogrande", "default.yaml", "winogrande"),
}
LL_TOL = 2e-4  # nats, as tests/test_eval.c

GENERIC_YAML = """task: anvil_generic{suffix}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{answer}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_bytes
"""


def task_yaml(src_dir, yaml_name, new_name, data, with_bytes):
    """lm-eval's YAML with the dataset replaced by a local JSONL file."""
    text = open(os.path.join(src_dir, yaml_name)).read()
    text = re.sub(r"^tag:\n(  - .*\n)+", "", text, flags=re.M)
    text = re.sub(r"^task: .*$", f"task: {new_name}", text, flags=re.M)
    text = re.sub(r"^dataset_path: .*$", "dataset_path: json", text, flags=re.M)
    text = re.sub(r"^dataset_name: .*\n", "", text, flags=re.M)
    text = re.sub(r"^(training_split|test_split|validation_split|fewshot_split): .*\n", "", text, flags=re.M)
    text += f"validation_split: validation\ndataset_kwargs:\n  data_files:\n    validation: {data}\n"
    if with_bytes:
        text = text.replace("metric_list:\n", "metric_list:\n  - metric: acc_bytes\n    aggregation: mean\n"
                                              "    higher_is_better: true\n", 1)
    return text


def build_tasks(tmp, fx):
    root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    names = {}
    for ours, (d, y, _) in TASKS.items():
        dst = os.path.join(tmp, d)
        os.makedirs(dst, exist_ok=True)
        for f in os.listdir(os.path.join(root, d)):
            if f.endswith(".py"):
                shutil.copy(os.path.join(root, d, f), dst)
        name = "anvil_" + ours
        with open(os.path.join(dst, name + ".yaml"), "w") as fh:
            fh.write(task_yaml(os.path.join(root, d), y, name, os.path.abspath(f"{fx}/{ours}.jsonl"),
                               ours != "winogrande"))
        names[ours] = name
    os.makedirs(os.path.join(tmp, "generic"), exist_ok=True)
    for suffix in ("", "_nobos"):
        with open(os.path.join(tmp, "generic", f"anvil_generic{suffix}.yaml"), "w") as fh:
            fh.write(GENERIC_YAML.format(suffix=suffix, data=os.path.abspath(f"{fx}/generic.jsonl")))
    names["generic"] = "anvil_generic"
    return names


def compare(label, res, samples, ref):
    bad = 0
    samples = sorted(samples, key=lambda s: s["doc_id"])
    if len(samples) != len(ref["items"]):
        print(f"  {label}: {len(samples)} items from lm-eval, {len(ref['items'])} in expected.json")
        return 1
    worst = 0.0
    for s, it in zip(samples, ref["items"]):
        lls = [r[0] for r in s["filtered_resps"]]
        worst = max([worst] + [abs(a - b) for a, b in zip(lls, it["lls"])])
        args = [list(a) for a in s["arguments"]] if isinstance(s["arguments"][0], (list, tuple)) else None
        if args and [a[:2] for a in args] != it["requests"]:
            print(f"  {label} doc {s['doc_id']}: requests differ:\n    lm-eval {args}\n    ours    {it['requests']}")
            bad += 1
    for m in ("acc", "acc_norm", "acc_bytes"):
        got = res.get(m + ",none")
        want = ref.get(m)
        if want is None:
            continue
        if got is None or abs(got - want) > 1e-9:
            print(f"  {label}: {m} lm-eval {got} vs expected.json {want}")
            bad += 1
    ok = worst <= LL_TOL
    print(f"  {label}: {len(samples)} items, max |ll diff| {worst:.2e}, acc {res.get('acc,none')}"
          f"{'' if ok and not bad else '  <-- MISMATCH'}")
    return bad + (not ok)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="tests/fixtures/eval")
    args = ap.parse_args()
    exp = json.load(open(os.path.join(args.fixtures, "expected.json")))
    tmp = tempfile.mkdtemp(prefix="anvil_lmeval_")
    failures = 0
    try:
        names = build_tasks(tmp, args.fixtures)
        tm = TaskManager(include_path=tmp)
        print(f"lm_eval {getattr(lm_eval, '__version__', '?')}")
        for model in ("gpt2", "llama"):
            mdir = os.path.abspath(os.path.join(args.fixtures, model))
            ref = exp["models"][model]
            for add_bos, tasks, key in ((None, list(names.values()), "mcq"),
                                        (False, ["anvil_generic_nobos"], "mcq_nobos")):
                lm = HFLM(pretrained=mdir, tokenizer=mdir, max_length=exp["ctx"], batch_size=1, device="cpu",
                          dtype="float32", add_bos_token=add_bos)
                out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=0, log_samples=True, task_manager=tm)
                for ours, name in names.items():
                    if key == "mcq_nobos":
                        if ours != "generic":
                            continue
                        name = "anvil_generic_nobos"
                    failures += compare(f"{model} {ours} ({key})", out["results"][name], out["samples"][name],
                                        ref[key][ours])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("all match" if not failures else f"{failures} mismatches")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
