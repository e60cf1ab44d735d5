"""The paper's CoT stage: a local vision-language model writes the CoTs of a set that build.py or synth.py wrote.

The model describes each image, then explains the right answer given the image, the description and the question
(the paper's MedGemma / Gemini stage); a CoT is kept only if the judge of rewards.py deduces the right letter from
it alone (standing in for the paper's manual check). The templated files stay; the model's go beside them:

    python cots.py --data my_set --cot-model PATH    # my_set/train.cot.jsonl, test.cot.jsonl; keep rate in summary.json

The describer is any vision-language model transformers runs (the paper's MedGemma is a Gemma 3): a family of
model.FAMILIES (Qwen2.5-VL, Qwen3-VL, Gemma 3) through the project's sampler, others through `generate`. Train on train.cot.jsonl; evaluate on test.jsonl, never on
test.cot.jsonl: keeping only the CoTs the judge follows to the right letter keeps the easier questions, and a test set
filtered that way flatters every model.

It is a script, not a library file: it needs model.py, the sampler and rewards.py.
"""
import argparse
import json
import os

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # read when torch loads OpenMP: docs/scale.md, "A shared CPU"
from tqdm import tqdm  # noqa: E402

import data
import model as M
import rewards
import sampler

DESCRIBE = "Describe the visual content of this medical image: the anatomy, the imaging modality, and any lesion."
EXPLAIN = ("Image description: {description}\nQuestion: {question}\n{options}\nThe correct answer is {letter}. "
           "{answer}. Explain step by step, from the visual evidence, why; end with the conclusion.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the folder of train.jsonl / test.jsonl and their images")
    p.add_argument("--cot-model", required=True, help="a local vision-language model (folder or hub id) that writes "
                   "the CoTs and judges them: Qwen2.5-VL, Qwen3-VL, Gemma 3 (MedGemma), or any AutoModelForImageTextToText")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generation batch (default: 8)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per description and per CoT (default: 256)")
    p.add_argument("--max-pixels", type=int, help=data.MAX_PIXELS_HELP)
    return p.parse_args(argv)


def model_cots(records: list[dict], policy, processor, batch_size: int = 8,
               max_new_tokens: int = 256) -> list[dict]:
    """The records whose model-written CoT the judge follows to the right letter, each with that CoT."""
    judge = rewards.Judge(policy, processor.tokenizer)

    def generate(prompts, images):
        chats = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}] for p in prompts]
        texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        inputs = {k: v.to(policy.device) for k, v in processor(text=texts, images=[[im] for im in images], padding=True,
                                                                 return_tensors="pt").items()}
        out = sampler.decode(policy, processor, inputs, greedy=True, max_new_tokens=max_new_tokens)
        return [t.strip() for t in out["texts"]]

    kept, descriptions = [], {}
    for i in tqdm(range(0, len(records), batch_size), desc="CoT by model"):
        chunk = records[i:i + batch_size]
        images = [data.load_image(r) for r in chunk]
        new = sorted({r["image"] for r in chunk} - set(descriptions))  # each image described once
        if new:
            paths = [r["image"] for r in chunk]
            descriptions.update(zip(new, generate([DESCRIBE] * len(new), [images[paths.index(x)] for x in new])))
        cots = generate([EXPLAIN.format(description=descriptions[r["image"]], question=r["question"],
                                        options=data.format_options(r["options"]), letter=r["answer"],
                                        answer=r["options"][data.LETTERS.index(r["answer"])]) for r in chunk], images)
        letters = judge([r["question"] for r in chunk], [r["options"] for r in chunk], cots)
        kept += [{**r, "cot": cot} for r, cot, letter in zip(chunk, cots, letters) if cot and letter == r["answer"]]
    return kept


def main(argv=None) -> dict:
    args = parse_args(argv)
    splits = [s for s in ("train", "test") if os.path.exists(os.path.join(args.data, f"{s}.jsonl"))]
    if not splits:
        raise SystemExit(f"{args.data}: no train.jsonl or test.jsonl; write them with `python build.py` (or "
                         "`python synth.py`) first")
    records = {s: data.load_jsonl(os.path.join(args.data, f"{s}.jsonl")) for s in splits}  # all validated first
    policy, processor = M.load_model(args.cot_model)
    data.limit_pixels(processor, args.max_pixels)
    kept = {s: model_cots(records[s], policy, processor, args.batch_size, args.max_new_tokens)
            for s in splits}
    for s in splits:
        data.write_jsonl(os.path.join(args.data, f"{s}.cot.jsonl"), kept[s])
    path = os.path.join(args.data, "summary.json")
    summary = json.load(open(path)) if os.path.exists(path) else {}
    summary["questions_before_cot_check"] = sum(len(r) for r in records.values())
    summary["cot_keep_rate"] = sum(len(k) for k in kept.values()) / max(1, summary["questions_before_cot_check"])
    summary.update({f"{s}_cot": len(kept[s]) for s in splits})
    json.dump(summary, open(path, "w"), indent=2)
    print(f"wrote {', '.join(f'{s}.cot.jsonl ({len(kept[s])})' for s in splits)} in {args.data}: "
          f"{summary['cot_keep_rate']:.1%} of CoTs kept")
    return summary


if __name__ == "__main__":
    main()
