"""Evaluate checkpoints on a MedAD JSONL: the paper's Table 1, and the metrics the paper leaves out.

Each checkpoint (an SFT adapter folder, a GRPO output, any model folder or hub id, zero-shot with the same prompt)
answers every question once per seed. Accuracy per task and Overall (all correct answers over all questions) are
reported as mean ± std over the seeds (std with ddof=1). With --temperature 0 decoding is greedy and the std is 0
by construction. Beyond the paper: format rate, consistency rate (the judge's letter from the thought alone equals
the answer, Eq. 6), unparseable rate, anomaly sensitivity and specificity, mean completion length, how often the
thought states its conclusion (and the consistency of those that do and do not), and accuracy by `source` and
`modality`.

Any vision-language model that transformers' AutoModelForImageTextToText and its processor's chat template run is a
row: a family that trains (Qwen2.5-VL, Qwen3-VL, Gemma 3) decodes through the project's sampler, others (LLaVA, ...)
through `generate`, with the same prompt, parsing and metrics. Every row is judged by one judge (docs/metrics.md,
"Table 1 you can compare"): the one given with --judge, else the one the Con-GRPO run among --ckpt used (its π_SFT when
it judged itself). Models score in the regime training used: bf16 weights under autocast where the GPU has bf16, the
LM head in fp32.

    python evaluate.py --ckpt sft_out --data test.jsonl --judge sft_out
    python evaluate.py --ckpt Qwen/Qwen2.5-VL-3B-Instruct sft_out grpo_out --names Qwen2.5-VL-3B SFT-only MedAD-R1 \
                       --data test.jsonl        # judged by grpo_out's judge, named in results.md

Writes OUT/results.json (every number, the command line, the model paths and the judge), OUT/results.md (the tables)
and OUT/predictions.jsonl (one line per question, model and seed), from which every number can be recomputed.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # read when torch loads OpenMP: docs/scale.md, "A shared CPU"
import numpy as np  # noqa: E402
from tqdm import tqdm

import answers
import data
import model as M
import precision
import rewards

EXTRA = [("format_rate", "Format"), ("consistency_rate", "Consistency"), ("consistency_parsed", "Consistency (parsed)"),
         ("unparseable_rate", "Unparseable"), ("sensitivity", "Anomaly sens."), ("specificity", "Anomaly spec."),
         ("completion_len", "Length")]
STATED = [("stated_rate", "Stated conclusion"), ("consistency_stated", "Consistency, stated"),
          ("consistency_unstated", "Consistency, not stated")]
COUNTS = ("What the columns count: Format, Consistency and Unparseable are over every question; Consistency counts an "
          "unparseable answer (or an empty thought) as inconsistent, Consistency (parsed) is over the questions whose "
          f"answer parsed. Anomaly sensitivity is over the anomaly questions whose answer is \"{answers.ABNORMAL}\" (the "
          f"positive), specificity over those whose answer is \"{answers.NORMAL}\"; any other answer (the other of the "
          "two, \"Artifact only\", \"Indeterminate\" or an unparseable one) counts as a miss. Options are matched case "
          "and spaces aside. A thought states its conclusion when it names the chosen option's text or announces its "
          "letter; the consistency columns after it split the questions by that.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True, help="checkpoints: folders or hub ids, one table row each")
    p.add_argument("--names", nargs="+", help="row names (default: the checkpoint paths)")
    p.add_argument("--data", required=True, help="test JSONL (the schema in docs/data.md); "
                   "not a cots.py *.cot.jsonl, whose judge filter biases the questions")
    p.add_argument("--out", default="eval_out", help="output folder (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds (paper: 3 runs)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0: greedy (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="questions per decoding batch (default: %(default)s)")
    p.add_argument("--judge", help="the one judge of every row's consistency: a model folder or hub id (an SFT output "
                   "folder too), 'none' (no consistency), or 'self' (each model judges its own thoughts: rows are then "
                   "not comparable). Default: the judge the Con-GRPO run among --ckpt used (its π_SFT if --judge self)")
    p.add_argument("--judge-view", choices=sorted(rewards.judge_views()), default="full", help="what the judge reads of "
                   "a thought: all of it (the paper) or all but its concluding part (default: %(default)s)")
    p.add_argument("--judge-max-tokens", type=int, default=768, help="thought tokens the judge reads (the end)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N questions only (0: all)")
    p.add_argument("--max-pixels", type=int, help=data.MAX_PIXELS_HELP)
    p.add_argument("--precision", choices=["bf16", "fp32"], help="bf16: bf16 weights under autocast, the LM head in "
                   "fp32, as training scores; default: bf16 where the GPU supports it, else fp32")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the models' own code from the hub")
    return p.parse_args(argv)


# ---- the one judge ----

def con_grpo_judge(ckpt: str) -> str | None:
    """The judge a Con-GRPO output folder was trained with (its args.json): a model path, or its π_SFT for 'self'."""
    recorded = os.path.join(ckpt, "args.json")
    if not os.path.isfile(recorded):
        return None
    run = json.load(open(recorded))
    if "group_size" not in run or not isinstance(run.get("judge"), str):
        return None  # not a train_grpo.py output
    return run["ckpt"] if run["judge"] == "self" else run["judge"]


def choose_judge(judge: str | None, ckpts: list[str]) -> tuple[str, str]:
    """(the judge of every row, how it was chosen): --judge as given, else the one Con-GRPO used."""
    if judge == "self":
        return "self", "each model judges its own thoughts (--judge self): the rows' consistency is not comparable"
    if judge == "none":
        return "none", "no judge (--judge none): no consistency"
    if judge:
        return judge, "given with --judge"
    used = {ckpt: con_grpo_judge(ckpt) for ckpt in ckpts}
    used = {ckpt: j for ckpt, j in used.items() if j}
    if len(set(used.values())) == 1:
        ckpt, j = next(iter(used.items()))
        return j, f"the judge the Con-GRPO run {ckpt} was trained with"
    if used:
        raise SystemExit(f"evaluate.py: the Con-GRPO runs among --ckpt used different judges ({used}): pass --judge with "
                         "the one that judges every row")
    raise SystemExit("evaluate.py: --judge is needed: name the one model that judges every row's consistency (the judge "
                     "your Con-GRPO run used; for --judge self there, its SFT output), or pass --judge none")


# ---- tables ----

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


def fmt(mean, std, percent=True):
    if mean is None:
        return "–"
    scale = 100 if percent else 1
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def table(title: str, columns: list[tuple[str, str]], results: list[dict], nested: str | None = None) -> list[str]:
    lines = ["", f"## {title}", "", "| Model | " + " | ".join(name for _, name in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for r in results:
        mean, std = (r["mean"], r["std"]) if nested is None else (r["mean"].get(nested, {}), r["std"].get(nested, {}))
        lines.append(f"| {r['name']} | " + " | ".join(fmt(mean.get(k), std.get(k), k != "completion_len")
                                                     for k, _ in columns) + " |")
    return lines


def tables(results: list[dict], judge_line: str, tasks: list[str]) -> str:
    tasks = [(t, answers.TASK_NAMES.get(t, t)) for t in tasks] + [("overall", "Overall")]
    lines = [judge_line] + table("Table 1: accuracy (%), mean ± std over seeds", tasks, results)
    lines += table("Beyond the paper (rates in %, length in tokens)", EXTRA, results)
    lines += table("What the consistency reward rewards (%)", STATED, results) + ["", COUNTS]
    for field in ("source", "modality"):
        values = sorted({v for r in results for v in r["mean"].get(f"by_{field}", {})})
        if values:
            lines += table(f"Accuracy (%) by {field}", [(v, v) for v in values], results, nested=f"by_{field}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    names = args.names or args.ckpt
    if len(names) != len(args.ckpt):
        raise ValueError(f"--names gives {len(names)} names for {len(args.ckpt)} checkpoints")
    records = data.load_jsonl(args.data)
    records = records[:args.limit] if args.limit else records
    judge_path, how = choose_judge(args.judge, args.ckpt)
    anomaly_answers = {data.same_text(r["options"][data.LETTERS.index(r["answer"])]) for r in records if r["task"] == "anomaly"}
    if anomaly_answers and not anomaly_answers & {data.same_text(answers.ABNORMAL), data.same_text(answers.NORMAL)}:
        print(f"evaluate.py: warning: no anomaly question of {args.data} has \"{answers.ABNORMAL}\" or "
              f"\"{answers.NORMAL}\" as its answer; anomaly sensitivity and specificity are left blank")
    device = M.default_device()
    regime = args.precision or M.default_precision(device)
    dtype = precision.weights_dtype(regime, trained=False)  # bf16 weights: a 72B baseline fits; the head in fp32
    fixed_judge = None
    if judge_path not in ("self", "none"):
        judge_model, judge_tokenizer = M.load_judge(judge_path, device=device, dtype=dtype,
                                                    trust_remote_code=args.trust_remote_code)
        fixed_judge = rewards.Judge(precision.fp32_logits(judge_model), judge_tokenizer,
                                    max_thought_tokens=args.judge_max_tokens)
    judge_line = f"Consistency judged by: {judge_path} ({how}); the judge reads {args.judge_view} thoughts."
    print(judge_line)
    os.makedirs(args.out, exist_ok=True)
    results, predictions = [], []
    for name, ckpt in zip(names, args.ckpt):
        policy, processor = M.load_model(ckpt, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code)
        data.limit_pixels(processor, args.max_pixels)
        precision.fp32_logits(policy)
        judge = rewards.Judge(policy, processor.tokenizer, max_thought_tokens=args.judge_max_tokens) \
            if judge_path == "self" else fixed_judge  # None with --judge none: no consistency column
        per_seed, t0 = [], time.time()
        for seed in tqdm(args.seeds, desc=f"evaluate {name}", dynamic_ncols=True):
            with precision.autocast(device, regime):
                rows = answers.answer(policy, processor, records, judge=judge, seed=seed, greedy=args.temperature == 0,
                                      temperature=args.temperature or 1.0, top_p=args.top_p,
                                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                      judge_view=args.judge_view)
            predictions += [{"model": name, **row} for row in rows]
            per_seed.append(answers.metrics(rows))
        seconds = time.time() - t0
        mean, std = mean_std(per_seed)
        results.append({"name": name, "ckpt": ckpt, "per_seed": per_seed, "mean": mean, "std": std,
                        "seconds_per_question": seconds / (len(records) * len(args.seeds))})
        del policy, judge
    report = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]) if argv is None else argv,
              "data": os.path.abspath(args.data), "questions": len(records), "seeds": args.seeds,
              "temperature": args.temperature, "precision": regime,
              "judge": {"model": judge_path, "how": how, "view": args.judge_view}, "results": results}
    json.dump(report, open(os.path.join(args.out, "results.json"), "w"), indent=2)
    data.write_jsonl(os.path.join(args.out, "predictions.jsonl"), predictions)
    note = "Greedy decoding: the std over seeds is 0 by construction.\n\n" if args.temperature == 0 else ""
    text = note + tables(results, judge_line, answers.tasks_of(records))
    open(os.path.join(args.out, "results.md"), "w", encoding="utf-8").write(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
