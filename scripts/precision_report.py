#!/usr/bin/env python3
"""Deviation of bfloat16 / float16 weights from float32 on the golden cases.

Runs `rome-collapse edit` on the 24 cases of ../shared/reference/golden_reference.json once per dtype
(δ, v*, u and the update stay float32; only the model's weights and activations change dtype) and prints
the relative deviation of the denominator, ‖ΔW‖ and the perplexity after the edit from the golden
(float32) values. Usage: python3 scripts/precision_report.py [--shared ../shared] [--binary build/rome-collapse]
[--device cuda] [--jobs 8] (--jobs runs edits side by side: on a GPU most of an edit's time is process start-up).
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import tempfile

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
parser.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "build", "rome-collapse"))
parser.add_argument("--dtypes", default="float32,bfloat16,float16")
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--jobs", type=int, default=1, help="edits run at the same time")
args = parser.parse_args()

golden = json.load(open(os.path.join(args.shared, "reference", "golden_reference.json")))
def run_case(scratch, dtype, arch, index, case):
    config = {
        "model": os.path.join(args.shared, "reference", "tiny-" + arch),
        "tokenizer": os.path.join(args.shared, "tokenizers", "gpt2"),
        "add_bos": False, "dtype": dtype, "device": args.device, "method": case["mode"], "request": case["request"],
        "hparams": {"layer": 1, "v_loss_layer": 3, "v_num_grad_steps": 20, "v_lr": 0.5,
                    "v_weight_decay": 0.5, "clamp_norm_factor": 4, "kl_factor": 0.0625},
        "context_templates": golden[arch]["context_templates"],
        "perplexity": {"texts": os.path.join(args.shared, "data", "me-ppl", "ME-PPL_50.json")},
        "record_timings": False,
    }
    stem = os.path.join(scratch, f"{dtype}-{arch}-{index}")
    json.dump(config, open(stem + ".config.json", "w"))
    done = subprocess.run([args.binary, "edit", "--config", stem + ".config.json", "--out", stem + ".result.json"],
                          capture_output=True, text=True, env=dict(os.environ, ROME_THREADS="1") if args.jobs > 1 else None)
    if done.returncode != 0:
        return (dtype, arch, index, case["mode"], None, None, None, (done.stderr.strip().splitlines() or ["?"])[-1])
    result = json.load(open(stem + ".result.json"))["results"][0]  # schema_version 2: always {"results": [...]}
    rel = lambda a, b: abs(a - b) / abs(b)
    return (dtype, arch, index, case["mode"], rel(result["denominator"], case["denominator"]),
            rel(result["update_norm"], case["update_norm"]), rel(result["perplexity_after"]["mean"], case["ppl_after"]), "")


with tempfile.TemporaryDirectory() as scratch, concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
    jobs = [pool.submit(run_case, scratch, dtype, arch, index, case)
            for dtype in args.dtypes.split(",") for arch in ("gpt2", "llama", "gptj")
            for index, case in enumerate(golden[arch]["cases"])]
    rows = [job.result() for job in jobs]

print("| dtype | arch | cases | max rel. dev. denominator | max rel. dev. ‖ΔW‖ | max rel. dev. ppl after |")
print("|---|---|---:|---:|---:|---:|")
for dtype in args.dtypes.split(","):
    for arch in ("gpt2", "llama", "gptj"):
        selected = [r for r in rows if r[0] == dtype and r[1] == arch]
        ok = [r for r in selected if r[4] is not None]
        if not ok:
            print(f"| {dtype} | {arch} | 0/{len(selected)} | failed: {selected[0][7] if selected else ''} | | |")
            continue
        print(f"| {dtype} | {arch} | {len(ok)}/{len(selected)} | {max(r[4] for r in ok):.2e} | "
              f"{max(r[5] for r in ok):.2e} | {max(r[6] for r in ok):.2e} |")
