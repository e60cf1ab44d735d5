"""Ask a trained model about one image (or a volume's slice): the prompt it sees, its thought, its answer, and what a
judge deduces from the thought alone.

The prompt, the sampler, the answer parsing and the judge are the library's (data.messages, sampler.decode,
rewards.split_think_answer / parse_answer, rewards.Judge), so what is printed is what training and evaluate.py see.

    python ask.py --ckpt grpo_out --image scan.png --question "Is there an anomaly?" --options "Abnormal,Normal,Artifact only,Indeterminate"
    python ask.py --ckpt grpo_out --image scan.png --question "..." --options "A,B,C,D" --samples 8 --judge sft_out
    python ask.py --ckpt grpo_out --image brain.nii.gz --slice 80 --question "Which region?" --options "..."
    python ask.py --ckpt grpo_out --data test.jsonl --limit 5 --judge sft_out    # a few records of a set, side by side

Greedy by default; `--samples K` draws K completions at `--temperature` and counts their answers. A volume (.nii,
.nii.gz, .nrrd, .mha, .mhd, a DICOM folder; needs requirements-volumes.txt) is shown as the builder shows it: an axial
slice in the radiological display, windowed by --modality/--anatomy as build.py windows it; without --slice, the slice
build.py would choose as a normal example (the middle of those with content). Without --options the question is
asked as it is (the model was trained on multiple-choice questions: its answer is then read as text).
"""
import argparse
import os
import tempfile
from collections import Counter

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # read when torch loads OpenMP: docs/scale.md, "A shared CPU"
import torch  # noqa: E402

import data  # noqa: E402
import model as M  # noqa: E402
import precision  # noqa: E402
import rewards  # noqa: E402
import sampler  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="the model: a train_grpo.py or train_sft.py output folder, any model "
                   "folder or hub id")
    p.add_argument("--image", help="an image file, or a volume (.nii, .nii.gz, .nrrd, .mha, .mhd, a DICOM folder)")
    p.add_argument("--question", help="the question asked of --image")
    p.add_argument("--options", help="the options, comma-separated (2 to 10; omit for an open question)")
    p.add_argument("--data", help="instead of --image: a JSONL of the project's schema, whose first --limit records are "
                   "asked, each printed beside its right answer")
    p.add_argument("--limit", type=int, default=5, help="records of --data to ask (default: %(default)s)")
    p.add_argument("--slice", type=int, help="the axial slice of a volume, in the display's order (default: the one the "
                   "builder would choose)")
    p.add_argument("--modality", default="", help="a volume's modality for its window: CT windows by --anatomy, any "
                   "other by its own percentiles (default: percentiles)")
    p.add_argument("--anatomy", default="", help="a CT volume's anatomy, for its window (brain, liver, lung, ...)")
    p.add_argument("--samples", type=int, default=1, help="completions to draw; 1: greedy (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature with --samples > 1 "
                   "(default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="completion length limit (default: %(default)s)")
    p.add_argument("--judge", help="a judge (model folder or hub id, an SFT output too) that reads the question, the "
                   "options and the thought only, and names the letter it leads to")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, help=data.MAX_PIXELS_HELP)
    p.add_argument("--precision", choices=["bf16", "fp32"], help="default: bf16 where the GPU supports it, else fp32")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code from the hub")
    return p.parse_args(argv)


def volume_slice(path: str, z: int | None, modality: str, anatomy: str, folder: str) -> tuple[str, int]:
    """(a PNG of one axial slice of a volume, as build.py shows it, in `folder`; the slice's index)."""
    import numpy as np
    from PIL import Image

    import volumes
    shown = volumes.display(volumes.read(path)).astype(np.float32)
    lo, hi = volumes.window(shown, modality, anatomy)
    if z is None:  # the builder's choice of a normal slice: the middle one of those with content
        content = ((shown - lo) / max(hi - lo, 1e-9) > 0.1).mean((1, 2))
        z = (volumes.choose_slices(np.zeros(len(shown)), content, more=0, normal=1)[1] or [len(shown) // 2])[0]
    if not 0 <= z < len(shown):
        raise SystemExit(f"ask.py: --slice {z} is outside the volume's {len(shown)} axial slices (0 to {len(shown) - 1})")
    png = os.path.join(folder, f"slice-{z}.png")
    Image.fromarray(volumes.to_uint8(shown[z], lo, hi)).save(png)
    return png, z


def ask(policy, processor, records: list[dict], args, judge=None) -> list[dict]:
    """Each record's completions (args.samples; greedy for 1), their thought, answer, letter and the judge's letter."""
    out = []
    for r in records:
        prompt = {k: v.to(policy.device) for k, v in data.prompt_batch(processor, [r]).items()}
        with precision.autocast(policy.device, args.precision):
            texts = sampler.decode(policy, processor, prompt, group_size=args.samples, greedy=args.samples == 1,
                                   temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)["texts"]
            judged = rewards.consistency_rewards(judge, texts, [r["question"]] * len(texts), [r["options"]] * len(texts))[1] \
                if judge is not None and len(r["options"]) >= 2 else [None] * len(texts)
        for text, by_judge in zip(texts, judged):
            thought, answer = rewards.split_think_answer(text)
            letter = rewards.parse_answer(answer, r["options"]) if r["options"] else None
            out.append({"record": r, "completion": text, "thought": thought, "answer": answer, "letter": letter,
                        "judge": by_judge})
    return out


def show(rows: list[dict], judged: bool) -> str:
    """The completions of one question, and with several the count of each answer."""
    lines, r = [], rows[0]["record"]
    for i, row in enumerate(rows, 1):
        lines.append(f"-- completion {i}" + (" (greedy)" if len(rows) == 1 else ""))
        if row["thought"] is None or row["answer"] is None:  # not well formed: what it wrote
            lines.append(f"wrote:   {row['completion'][:300]!r}")
        lines += [f"thought: {row['thought'] if row['thought'] is not None else '(no <think> block)'}",
                  f"answer:  {row['answer'] if row['answer'] is not None else '(no <answer> block)'}"]
        if r["options"]:
            lines[-1] += f"  -> {row['letter']} ({r['options'][data.LETTERS.index(row['letter'])]})" if row["letter"] \
                else "  [unparseable]"
        if "answer" in r:
            lines[-1] += "  right" if row["letter"] == r["answer"] else f"  wrong (right: {r['answer']})"
        if judged:
            verdict = "not asked (empty thought or unparseable answer)" if row["judge"] is None else \
                f"{row['judge']}: {'consistent' if row['judge'] == row['letter'] else 'inconsistent'}"
            lines.append(f"judge, from the thought alone: {verdict}")
    if len(rows) > 1:
        counts = Counter(row["letter"] or "unparseable" for row in rows)
        lines.append("answers over %d samples: %s" % (len(rows), ", ".join(f"{k} x{v}" for k, v in counts.most_common())))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if bool(args.image) == bool(args.data):
        raise SystemExit("ask.py: give --image (with --question) or --data")
    if args.image and not args.question:
        raise SystemExit("ask.py: --image needs --question")
    options = [o.strip() for o in args.options.split(",") if o.strip()] if args.options else []
    if args.options and not 2 <= len(options) <= len(data.LETTERS):
        raise SystemExit(f"ask.py: --options needs 2 to {len(data.LETTERS)} comma-separated options, got {len(options)}")
    device = M.default_device()
    args.precision = args.precision or M.default_precision(device)
    folder = tempfile.mkdtemp(prefix="ask-")
    if args.data:
        records = data.load_jsonl(args.data)[:args.limit]
    else:
        image, where = args.image, ""
        if not os.path.exists(image):
            raise SystemExit(f"ask.py: --image {image}: no such file")
        if os.path.isdir(image) or image.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
            image, z = volume_slice(image, args.slice, args.modality, args.anatomy, folder)
            where = f" (axial slice {z})"
        try:
            data.read_image(image)
        except Exception as e:  # PIL raises many kinds for a broken file
            raise SystemExit(f"ask.py: --image {args.image}: not a readable image ({type(e).__name__}: {e})") from None
        records = [{"id": args.image + where, "image_path": image, "question": args.question, "options": options}]
    policy, processor = M.load_model(args.ckpt, device=device, dtype=precision.weights_dtype(args.precision, trained=False),
                                     trust_remote_code=args.trust_remote_code)
    data.limit_pixels(processor, args.max_pixels)
    precision.fp32_logits(policy)
    judge = None
    if args.judge:
        judge_model, judge_tokenizer = M.load_judge(args.judge, device=device, trust_remote_code=args.trust_remote_code,
                                                    dtype=precision.weights_dtype(args.precision, trained=False))
        judge = rewards.Judge(precision.fp32_logits(judge_model), judge_tokenizer)
    torch.manual_seed(args.seed)
    rows = ask(policy, processor, records, args, judge)
    print("== prompt (the model's chat template; the processor expands the image's placeholder into its tokens)")
    print(processor.apply_chat_template(data.messages(records[0]), add_generation_prompt=True, tokenize=False))
    for r in records:
        mine = [row for row in rows if row["record"] is r]
        print(f"\n== {r['id']}: {r['question']}")
        if r["options"]:
            print(data.format_options(r["options"]))
        print(show(mine, judge is not None))
    return rows


if __name__ == "__main__":
    main()
