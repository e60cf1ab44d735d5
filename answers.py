"""Answering MedAD questions and counting the answers: one row per question, and the numbers of Table 1 and beyond.

Imports data.py, model.py, rewards.py and sampler.py. evaluate.py builds its tables from these rows and numbers;
train_sft.py and train_grpo.py log the same numbers on held-out questions while they train, so that a number in a
training log means what it means in Table 1.

    rows = answer(policy, processor, records, judge=judge, seed=0)   # decode, parse, judge: one dict a question
    numbers = metrics(rows)                                          # accuracy per task, Overall, format, ...
"""
import numpy as np
import torch

import data
import model as M
import rewards
import sampler

TASK_NAMES = {"anatomy": "Anatomy ID.", "anomaly": "Anomaly Det.", "localization": "Lesion Loc.",
              "modality": "Modality Class.", "pathology": "Pathology Char."}  # Table 1's columns, in its order
ABNORMAL, NORMAL = data.ANOMALY_OPTIONS[0], data.ANOMALY_OPTIONS[1]


@torch.no_grad()
def answer(policy, processor, records: list[dict], *, judge=None, seed: int | None = 0, greedy: bool = False,
           temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 512, batch_size: int = 32,
           judge_view: str = "full") -> list[dict]:
    """One row per question: the completion, its parsed letter, correctness, format, whether it ended, the judge's
    letter and consistency (None without a judge), whether the thought states its conclusion. A family that trains
    (model.FAMILIES: Qwen2.5-VL, Qwen3-VL, Gemma 3) decodes through the fast sampler, any other vision-language model through
    `generate` (sampler.decode). `seed` seeds the
    sampling (None: the random state as it is, as a greedy evaluation inside a training loop wants it)."""
    rows, special = [], sampler.special_tokens(processor.tokenizer)
    if seed is not None:
        torch.manual_seed(seed)
    for i in range(0, len(records), batch_size):
        chunk = records[i:i + batch_size]
        prompt = {k: v.to(policy.device) for k, v in data.prompt_batch(processor, chunk).items()}
        out = sampler.decode(policy, processor, prompt, greedy=greedy, temperature=temperature, top_p=top_p,
                             max_new_tokens=max_new_tokens)
        texts, ended = out["texts"], out["ended"].tolist()
        scored = rewards.score(texts, chunk, judge, ended=ended, special_tokens=special, judge_view=judge_view)
        lengths = out["completion_mask"].sum(1).tolist()
        for j, (r, text) in enumerate(zip(chunk, texts)):
            letter = rewards.answer_letter(text, r["options"])
            rows.append({"id": r["id"], "task": r["task"], "seed": seed, "completion": text, "letter": letter,
                         "answer": r["answer"], "correct": letter == r["answer"],
                         "format_ok": scored["format"][j].item() == 1.0, "ended": ended[j],
                         "judge": scored["judge_letters"][j],
                         "consistent": None if judge is None else scored["consistency"][j].item() == 1.0,
                         "stated": scored["stated"][j].item() == 1.0,
                         "completion_tokens": lengths[j], "truth_text": r["options"][data.LETTERS.index(r["answer"])],
                         "predicted_text": r["options"][data.LETTERS.index(letter)] if letter else None,
                         "source": r.get("source"), "modality": r.get("modality"), "qid": r.get("qid")})
    return rows


def rate(rows, key):
    """The mean of a key over rows that have it (None: not measured, as the consistency without a judge)."""
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None


def tasks_of(rows: list[dict]) -> list[str]:
    """The rows' tasks in Table 1's order: the paper's five, all of them, where any MedAD task is present (a task
    without questions is then None, "–" in the table), then a converted benchmark's own question types, sorted."""
    present = {r["task"] for r in rows}
    return (list(TASK_NAMES) if present & set(TASK_NAMES) else []) + sorted(present - set(TASK_NAMES))


def metrics(rows: list[dict]) -> dict:
    """The numbers of one model and one seed, from its rows (docs/metrics.md, "What the metrics count")."""
    out = {task: rate([r for r in rows if r["task"] == task], "correct") for task in tasks_of(rows)}
    out["overall"] = rate(rows, "correct")  # all correct answers over all questions, not a mean of the tasks
    out["format_rate"] = rate(rows, "format_ok")
    out["consistency_rate"] = rate(rows, "consistent")  # over every question: an unparseable answer is inconsistent
    out["consistency_parsed"] = rate([r for r in rows if r["letter"] is not None], "consistent")
    out["unparseable_rate"] = float(np.mean([r["letter"] is None for r in rows]))
    out["stated_rate"] = rate(rows, "stated")  # the thought names its answer's option or letter
    out["consistency_stated"] = rate([r for r in rows if r["stated"]], "consistent")
    out["consistency_unstated"] = rate([r for r in rows if not r["stated"]], "consistent")
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
