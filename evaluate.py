"""Evaluate checkpoints on a MedAD JSONL: the paper's Table 1, and the metrics the paper leaves out.

Each checkpoint (an SFT adapter folder, a GRPO output, any model folder or hub id, zero-shot with the same prompt)
answers every question once per seed. Accuracy per task and Overall (all correct answers over all questions) are
reported as mean ± std over the seeds (std with ddof=1). With --temperature 0 decoding is greedy and the std is 0
by construction. Beyond the paper: format rate, consistency rate (the judge's letter from the thought alone equals
the answer, Eq. 6), unparseable rate, anomaly sensitivity and specificity, mean completion length, and accuracy
by `source` and `modality`.

    python evaluate.py --ckpt sft_out --data test.jsonl
    python evaluate.py --ckpt base sft_out grpo_out --names "Qwen2.5-VL-3B" "SFT-only" "MedAD-R1" --data test.jsonl

Writes OUT/results.json (every number, the command line and the model paths), OUT/results.md (the tables) and
OUT/predictions.jsonl (one line per question, model and seed), from which every number can be recomputed.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import build
import data
import model as M
import rewards
import sampler

TABLE1 = [("anatomy", "Anatomy ID."), ("anomaly", "Anomaly Det."), ("localization", "Lesion Loc."),
          ("modality", "Modality Class."), ("pathology", "Pathology Char.")]
EXTRA = [("format_rate", "Format"), ("consistency_rate", "Consistency"), ("consistency_parsed", "Consistency (parsed)"),
         ("unparseable_rate", "Unparseable"),
         ("sensitivity", "Anomaly sens."), ("specificity", "Anomaly spec."), ("completion_len", "Length")]
ABNORMAL, NORMAL = build.ANOMALY_OPTIONS[0], build.ANOMALY_OPTIONS[1]
COUNTS = ("What the columns count: Format, Consistency and Unparseable are over every question; Consistency counts an "
          "unparseable answer (or an empty thought) as inconsistent, Consistency (parsed) is over the questions whose "
          f"answer parsed. Anomaly sensitivity is over the anomaly questions whose answer is \"{ABNORMAL}\" (the "
          f"positive), specificity over those whose answer is \"{NORMAL}\"; any other answer (the other of the two, "
          "\"Artifact only\", \"Indeterminate\" or an unparseable one) counts as a miss. Options are matched case and "
          "spaces aside.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True, help="checkpoints: folders or hub ids, one table row each")
    p.add_argument("--names", nargs="+", help="row names (default: the checkpoint paths)")
    p.add_argument("--data", required=True, help="test JSONL (the schema in README.md, \"The JSONL the scripts read\")")
    p.add_argument("--out", default="eval_out", help="output folder (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds (paper: 3 runs)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0: greedy (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="questions per generate call (default: %(default)s)")
    p.add_argument("--judge", default="self", help="judge of the consistency rate: 'self' (each checkpoint judges "
                   "its own thoughts, text-only), 'none', or one model folder / hub id for every row")
    p.add_argument("--judge-max-tokens", type=int, default=768, help="thought tokens the judge reads (the end)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N questions only (0: all)")
    p.add_argument("--max-pixels", type=int, default=M.MAX_PIXELS, help="larger images are resized down to this many "
                   "pixels, aspect kept (default: %(default)s = 1,280 image tokens of 28x28; a lower bound of the "
                   "checkpoint's processor stays)")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="weights of the models and judges; default: bf16 "
                   "where the GPU supports it, else fp32")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the models' own code from the hub")
    return p.parse_args(argv)


# ---- metrics: pure functions of the predictions ----

def rate(rows, key):
    """The mean of a key over rows that have it (None: not measured, as the consistency without a judge)."""
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None


def metrics(rows: list[dict]) -> dict:
    """The numbers of one model and one seed, from its predictions."""
    out = {task: rate([r for r in rows if r["task"] == task], "correct") for task, _ in TABLE1}
    out["overall"] = rate(rows, "correct")
    out["format_rate"] = rate(rows, "format_ok")
    out["consistency_rate"] = rate(rows, "consistent")  # over every question: an unparseable answer is inconsistent
    out["consistency_parsed"] = rate([r for r in rows if r["letter"] is not None], "consistent")
    out["unparseable_rate"] = float(np.mean([r["letter"] is None for r in rows]))
    # "Abnormal" is the positive answer; any other (Normal, Artifact only, Indeterminate, none) misses a positive
    anomaly = [r for r in rows if r["task"] == "anomaly"]
    said = lambda r, text: r["predicted_text"] is not None and data.same_text(r["predicted_text"]) == data.same_text(text)  # noqa: E731
    positives = [r for r in anomaly if data.same_text(r["truth_text"]) == data.same_text(ABNORMAL)]
    negatives = [r for r in anomaly if data.same_text(r["truth_text"]) == data.same_text(NORMAL)]
    out["sensitivity"] = float(np.mean([said(r, ABNORMAL) for r in positives])) if positives else None
    out["specificity"] = float(np.mean([said(r, NORMAL) for r in negatives])) if negatives else None
    out["completion_len"] = rate(rows, "completion_tokens")
    for field in ("source", "modality"):
        values = sorted({r[field] for r in rows if r.get(field)})
        if values:
            out[f"by_{field}"] = {v: rate([r for r in rows if r.get(field) == v], "correct") for v in values}
    return out


def mean_std(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and std (ddof=1; 0 for one seed) of every number across seeds, nested dicts included."""
    mean, std = {}, {}
    for key, value in per_seed[0].items():
        if isinstance(value, dict):
            mean[key], std[key] = mean_std([s[key] for s in per_seed])
        else:
            values = [s[key] for s in per_seed if s[key] is not None]
            mean[key] = float(np.mean(values)) if values else None
            std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)
    return mean, std


# ---- answering ----

def answer(policy, processor, judge, records, seed, args) -> list[dict]:
    """One prediction per question: completion, parsed letter, correctness, format, the judge's letter."""
    rows = []
    torch.manual_seed(seed)
    for i in range(0, len(records), args.batch_size):
        chunk = records[i:i + args.batch_size]
        prompt = {k: v.to(policy.device) for k, v in data.prompt_batch(processor, chunk).items()}
        out = sampler.sample(policy, processor, prompt, greedy=args.temperature == 0, temperature=args.temperature or 1.0,
                       top_p=args.top_p, max_new_tokens=args.max_new_tokens)
        texts, ended = out["texts"], out["ended"].tolist()
        if judge is not None:
            consistent, judged = rewards.consistency_rewards(judge, texts, [r["question"] for r in chunk],
                                                              [r["options"] for r in chunk])
        else:
            consistent, judged = [None] * len(chunk), [None] * len(chunk)
        for r, text, done, n, con, j in zip(chunk, texts, ended, out["completion_mask"].sum(1).tolist(), consistent, judged):
            letter = rewards.answer_letter(text, r["options"])
            rows.append({"id": r["id"], "task": r["task"], "seed": seed, "completion": text, "letter": letter,
                         "answer": r["answer"], "correct": letter == r["answer"],
                         "format_ok": rewards.format_reward(text, done) == 1.0, "ended": done, "judge": j,
                         "consistent": None if con is None else con == 1.0, "completion_tokens": n,
                         "truth_text": r["options"]["ABCD".index(r["answer"])],
                         "predicted_text": r["options"]["ABCD".index(letter)] if letter else None,
                         "source": r.get("source"), "modality": r.get("modality")})
    return rows


# ---- tables ----

def fmt(mean, std, percent=True):
    if mean is None:
        return "–"
    scale = 100 if percent else 1
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def tables(results: list[dict]) -> str:
    head = "| Model | " + " | ".join(name for _, name in TABLE1) + " | Overall |"
    lines = ["## Table 1: accuracy (%), mean ± std over seeds", "", head, "|" + "---|" * (len(TABLE1) + 2)]
    for r in results:
        cells = [fmt(r["mean"][t], r["std"][t]) for t, _ in TABLE1 + [("overall", "")]]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", "## Beyond the paper (rates in %, length in tokens)", "",
              "| Model | " + " | ".join(name for _, name in EXTRA) + " |", "|" + "---|" * (len(EXTRA) + 1)]
    for r in results:
        lines.append(f"| {r['name']} | " + " | ".join(fmt(r["mean"][k], r["std"][k], k != "completion_len")
                                                     for k, _ in EXTRA) + " |")
    lines += ["", COUNTS]
    for field in ("source", "modality"):
        values = sorted({v for r in results for v in r["mean"].get(f"by_{field}", {})})
        if values:
            lines += ["", f"## Accuracy (%) by {field}", "", "| Model | " + " | ".join(values) + " |",
                      "|" + "---|" * (len(values) + 1)]
            for r in results:
                by_mean, by_std = r["mean"].get(f"by_{field}", {}), r["std"].get(f"by_{field}", {})
                lines.append(f"| {r['name']} | " + " | ".join(fmt(by_mean.get(v), by_std.get(v)) for v in values) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    names = args.names or args.ckpt
    if len(names) != len(args.ckpt):
        raise ValueError(f"--names gives {len(names)} names for {len(args.ckpt)} checkpoints")
    records = data.load_jsonl(args.data)
    records = records[:args.limit] if args.limit else records
    if any(r["task"] == "anomaly" for r in records) and not any(
            data.same_text(r["options"]["ABCD".index(r["answer"])]) in (data.same_text(ABNORMAL), data.same_text(NORMAL))
            for r in records if r["task"] == "anomaly"):
        print(f"evaluate.py: warning: no anomaly question of {args.data} has \"{ABNORMAL}\" or \"{NORMAL}\" as its answer; "
              "anomaly sensitivity and specificity are left blank")
    device = M.default_device()
    dtype = torch.bfloat16 if (args.precision or M.default_precision(device)) == "bf16" else torch.float32
    fixed_judge = None
    if args.judge not in ("self", "none"):
        fixed_judge = rewards.load_judge(args.judge, device=device, dtype=dtype,
                                         max_thought_tokens=args.judge_max_tokens, trust_remote_code=args.trust_remote_code)
    os.makedirs(args.out, exist_ok=True)
    results, predictions = [], []
    for name, ckpt in zip(names, args.ckpt):
        policy, processor = M.load_model(ckpt, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code,
                                         max_pixels=args.max_pixels)
        judge = rewards.Judge(policy, processor.tokenizer, max_thought_tokens=args.judge_max_tokens) \
            if args.judge == "self" else fixed_judge  # None with --judge none: no consistency column
        per_seed, t0 = [], time.time()
        for seed in tqdm(args.seeds, desc=f"evaluate {name}", dynamic_ncols=True):
            rows = answer(policy, processor, judge, records, seed, args)
            predictions += [{"model": name, **row} for row in rows]
            per_seed.append(metrics(rows))
        seconds = time.time() - t0
        mean, std = mean_std(per_seed)
        results.append({"name": name, "ckpt": ckpt, "per_seed": per_seed, "mean": mean, "std": std,
                        "seconds_per_question": seconds / (len(records) * len(args.seeds))})
        del policy, judge
    report = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]) if argv is None else argv,
              "data": os.path.abspath(args.data), "questions": len(records), "seeds": args.seeds,
              "temperature": args.temperature, "judge": args.judge, "results": results}
    json.dump(report, open(os.path.join(args.out, "results.json"), "w"), indent=2)
    data.write_jsonl(os.path.join(args.out, "predictions.jsonl"), predictions)
    table = tables(results)
    note = "Greedy decoding: the std over seeds is 0 by construction.\n\n" if args.temperature == 0 else ""
    open(os.path.join(args.out, "results.md"), "w").write(note + table)
    print(note + table)
    return report


if __name__ == "__main__":
    main()
