#!/usr/bin/env bash
# The paper in miniature on a CPU: synthetic MedAD set -> tiny Qwen2.5-VL -> SFT -> Con-GRPO -> Table 1.
# Sizes and step counts are set for a 2-core CPU (about 10 minutes); the algorithm and its defaults are the paper's
# except the learning rates and step counts, which a random 0.4M-parameter model needs.
set -euo pipefail
OUT=${OUT:-runs/demo}
export HF_HUB_OFFLINE=1
python data.py synth --out "$OUT/data" --n-images 600 --seed 0
python model.py tiny --out "$OUT/tiny" --corpus "$OUT/data/train.jsonl" --seed 0
# Stage 1: LoRA SFT (Eq. 1); rank 64 covers the 64-wide tiny model, lr 3e-3 instead of 1e-4
python train_sft.py --model "$OUT/tiny" --data "$OUT/data/train.jsonl" --out "$OUT/sft" \
  --epochs 6 --batch-size 16 --micro-batch 16 --lr 3e-3 --lora-r 64 --lora-alpha 128 --merge
# Stage 2: Con-GRPO (Eq. 2-8), 8 prompts x G=8 per step, judge self, 45 steps, lr 1e-5 instead of 1e-6
python train_grpo.py --ckpt "$OUT/sft" --data "$OUT/data/train.jsonl" --out "$OUT/grpo" \
  --epochs 0.2 --max-new-tokens 64 --lr 1e-5
# Table 1: the untrained model, SFT-only and SFT + Con-GRPO, 3 sampling seeds, one fixed judge (the SFT model)
python evaluate.py --ckpt "$OUT/tiny" "$OUT/sft" "$OUT/grpo" --names untrained SFT-only "SFT + Con-GRPO" \
  --data "$OUT/data/test.jsonl" --out "$OUT/eval" --max-new-tokens 64 --judge "$OUT/sft/merged"
