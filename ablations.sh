#!/usr/bin/env bash
# Tables 2 and 3 of the paper in miniature, on the demo's data and SFT output (run `bash demo.sh` first).
# Table 2: RL-only (Con-GRPO from the untrained model), SFT-only, SFT + GRPO with the accuracy reward only, with the
# consistency reward only, full Con-GRPO, and two rows the paper does not have: Con-GRPO with the ratio against π_SFT
# (--ratio-ref sft, Eq. 8 as written; the demo takes it against the sampling policy, as TRL, VLM-R1 and DeepSeekMath
# do: demo.sh says why), and Con-GRPO with a judge that reads the thought without its conclusion (--judge-view
# hide-conclusion). Table 3: the reward weights. Then the judge views: SFT-only, Con-GRPO and Con-GRPO with the
# hidden-conclusion judge, their consistency judged both ways.
# Every run takes the demo's Stage 2 settings but, for time, half its steps (379; the full run here is its own run of
# that length, so that every row is comparable); RL-only 190, as its rewards are all 0. Each row is evaluated with 3
# sampling seeds and the demo's judge. About 31 minutes on 2 CPU cores, alone on the machine; finished runs are
# skipped when it is run again. Tables go to $OUT/ablations/ (docs/ablations.md shows them as measured).
set -euo pipefail
OUT=${OUT:-runs/demo}
A="$OUT/ablations"
export HF_HUB_OFFLINE=1
GRPO="--data $OUT/data/train.jsonl --judge $OUT/judge --epochs 0.2 --max-new-tokens 64 --lr 1e-4 --ratio-ref old"
run() {  # name, checkpoint, extra flags; a run is done when its DONE marker, written last, is there
  [ -f "$A/$1/DONE" ] || python train_grpo.py --ckpt "$2" --out "$A/$1" $GRPO "${@:3}"
}
run full "$OUT/sft"
run rl-only "$OUT/tiny" --epochs 0.1
run acc-only "$OUT/sft" --lambda-fmt 0 --lambda-acc 1 --lambda-con 0
run con-only "$OUT/sft" --lambda-fmt 0 --lambda-acc 0 --lambda-con 1
run ratio-sft "$OUT/sft" --ratio-ref sft
run hidden-conclusion "$OUT/sft" --judge-view hide-conclusion
run format-focused "$OUT/sft" --lambda-fmt 0.8 --lambda-acc 0.1 --lambda-con 0.1
run accuracy-focused "$OUT/sft" --lambda-fmt 0.1 --lambda-acc 0.8 --lambda-con 0.1
run consistency-focused "$OUT/sft" --lambda-fmt 0.1 --lambda-acc 0.1 --lambda-con 0.8
EVAL="--data $OUT/data/test.jsonl --max-new-tokens 64 --judge $OUT/judge"
python evaluate.py $EVAL --out "$A/table2" \
  --ckpt "$A/rl-only" "$OUT/sft" "$A/acc-only" "$A/con-only" "$A/full" "$A/ratio-sft" "$A/hidden-conclusion" \
  --names "RL-only (Con-GRPO)" "SFT-only" "SFT + GRPO (Acc-only)" "SFT + GRPO (Con-only)" "MedAD-R1 (full)" \
          "MedAD-R1, ratio vs π_SFT" "MedAD-R1, judge without the conclusion"
python evaluate.py $EVAL --out "$A/table3" \
  --ckpt "$A/format-focused" "$A/accuracy-focused" "$A/consistency-focused" "$A/full" \
  --names "Format-focused (0.8/0.1/0.1)" "Accuracy-focused (0.1/0.8/0.1)" "Consistency-focused (0.1/0.1/0.8)" \
          "Balanced (1/3 each)"
python evaluate.py $EVAL --out "$A/views" --judge-view hide-conclusion \
  --ckpt "$OUT/sft" "$A/full" "$A/hidden-conclusion" \
  --names "SFT-only" "MedAD-R1 (full)" "MedAD-R1, judge without the conclusion"
echo "Table 2: $A/table2/results.md   Table 3: $A/table3/results.md   judge without the conclusion: $A/views/results.md"
