"""Seconds per Con-GRPO optimizer step: train_grpo.py's loop against TRL's GRPOTrainer, same model, same prompts
with images, G, prompts per step, new tokens, β, learning rate and reward (format + accuracy + consistency judged
by the same Judge, on the same device), in one run on one machine.

    pip install -r bench/requirements.txt
    python bench/grpo_vs_trl.py --size tiny     # the embedded tiny model, 112 px images (16 image tokens)
    python bench/grpo_vs_trl.py --size tiny --family qwen3-vl                    # a tiny Qwen3-VL, 128 px (16 tokens)
    python bench/grpo_vs_trl.py --size small    # ~16M parameters, 448 px images (256 image tokens)
    python bench/grpo_vs_trl.py --size gpu --prompts 4 --max-new-tokens 64      # 127M parameters, on the GPU
    python bench/grpo_vs_trl.py --size 3b --steps 3                              # Qwen2.5-VL-3B's text widths

Both take one optimizer step per batch of P prompts x G completions, accumulated over micro-batches of 8
completions; completions are forced to the full length (min_new_tokens) so both generate the same token count.
Both fully fine-tune fp32 weights, on a GPU under bf16 autocast (ours: --precision bf16; TRL: bf16=True).
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from common import SIZES, M, data, tiny_setup

import rewards
import train_grpo
from tiny import FAMILIES

def ours(ckpt, train, args):
    out = tempfile.mkdtemp(prefix="ours-")
    train_grpo.main(["--ckpt", ckpt, "--data", train, "--out", out, "--group-size", str(args.group_size),
                     "--prompts-per-step", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
                     "--micro-batch", "8", "--lr", "1e-6", "--beta", "0.04", "--stop-after", str(args.steps),
                     "--log-samples-every", "0", "--min-new-tokens", str(args.max_new_tokens)])
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def trl(ckpt, records, args):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    device = M.default_device()
    policy, processor = M.load_model(ckpt, device=device, dtype=torch.float32)
    judge = rewards.Judge(M.load_model(ckpt, device=device)[0], processor.tokenizer)  # π_SFT's weights, as --judge self
    # TRL puts the `image` column before the user's text: the layout of data.messages
    rows = [{"prompt": [{"role": "system", "content": data.SYSTEM_PROMPT},
                        {"role": "user", "content": data.messages(r)[1]["content"][1]["text"]}],
             "image": data.load_image(r), "question": r["question"], "options": r["options"], "answer": r["answer"]}
            for r in records]

    def reward(completions, question, options, answer, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        recs = [{"question": q, "options": o, "answer": a} for q, o, a in zip(question, options, answer)]
        return rewards.score(texts, recs, judge)["reward"].tolist()

    times = []

    class Timer(TrainerCallback):  # wall time between optimizer steps: generation, rewards, loss, update
        def on_train_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

    config = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-"), per_device_train_batch_size=8,
                        gradient_accumulation_steps=args.prompts * args.group_size // 8, num_generations=args.group_size,
                        max_completion_length=args.max_new_tokens, beta=0.04, learning_rate=1e-6, temperature=1.0,
                        loss_type="grpo", scale_rewards="none", max_steps=args.steps, logging_steps=1, report_to="none",
                        use_cpu=device == "cpu", bf16=device == "cuda", save_strategy="no", remove_unused_columns=False, seed=0,
                        generation_kwargs={"min_new_tokens": args.max_new_tokens})
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=processor, callbacks=[Timer()])
    trainer.train()
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="tiny", help="model and image size (default: %(default)s)")
    p.add_argument("--ckpt", help="a model folder to use instead of a fresh random one of --size")
    p.add_argument("--family", choices=FAMILIES, default="qwen2.5-vl", help="the fresh model's family (default: "
                   "%(default)s)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=8, help="G (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per completion (default: %(default)s)")
    p.add_argument("--steps", type=int, default=6, help="steps each; the first is warm-up (default: %(default)s)")
    args = p.parse_args()
    _, _, records, folder = tiny_setup(n_images=60, **SIZES[args.size], build=args.ckpt is None, family=args.family)
    ckpt, train = args.ckpt or os.path.join(folder, "tiny"), os.path.join(folder, "data", "train.jsonl")
    rows = ours(ckpt, train, args)[1:]
    t_ours = [r["t_sample"] + r["t_judge"] + r["t_loss"] for r in rows]
    t_trl = trl(ckpt, records, args)[1:]
    median = {k: statistics.median(r[k] for r in rows) for k in ("t_sample", "t_judge", "t_loss")}
    ratio = statistics.median(t_ours) / statistics.median(t_trl)
    device = M.default_device()
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.size} {args.family}: {M.count_parameters(M.load_model(ckpt, device='cpu')[0]) / 1e6:.1f}M parameters, "
          f"{args.prompts} prompts x G={args.group_size} x {args.max_new_tokens} new tokens, {where}")
    print(f"train_grpo.py step: median {statistics.median(t_ours):.3f} s (sampling {median['t_sample']:.3f}, judge "
          f"{median['t_judge']:.3f}, loss {median['t_loss']:.3f})   TRL GRPOTrainer step: median "
          f"{statistics.median(t_trl):.3f} s   ratio {ratio:.2f}")
    print(f"size={args.size} family={args.family} ours_s={statistics.median(t_ours):.4f} sample_s={median['t_sample']:.4f} "
          f"judge_s={median['t_judge']:.4f} loss_s={median['t_loss']:.4f} trl_s={statistics.median(t_trl):.4f} "
          f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
