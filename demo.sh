#!/usr/bin/env bash
# The paper in miniature on a CPU: synthetic MedAD set -> tiny Qwen2.5-VL -> (SFT -> Con-GRPO -> Table 1).
set -euo pipefail
OUT=${OUT:-runs}
export HF_HUB_OFFLINE=1
python data.py synth --out "$OUT/data" --n-images 600 --seed 0
python model.py tiny --out "$OUT/tiny" --corpus "$OUT/data/train.jsonl" --seed 0
