#!/usr/bin/env bash
# Every GPU check of the project in one run on one H100 or H200, within 9 minutes (a step that would end past the
# deadline is cut, and says so), with a summary at the end. In order of priority:
#   1. torchrun's process group under NCCL (one process): parameter broadcast, gradient sum, metric sum
#   2. the CLI end to end at 127M parameters (synth -> model -> SFT --full -> evaluate), then Con-GRPO for 2 steps
#      under `torchrun --nproc_per_node 1` (NCCL), replicated and --fsdp
#   3. train_grpo.py at Qwen2.5-VL-3B's text widths (2.27B parameters): full, LoRA and --fsdp, one step each, with
#      the step-1 KL (0 when π_θ and π_SFT run the same computation) and peak memory
#   4. sampler.sample's exactness on the GPU (greedy = generate, log-probs = completion_logprobs, CUDA graph = eager)
#   5. bench/rollout.py at 3B text widths: tokens/s against generate's and the bandwidth bound, bf16 weights against
#      fp32 weights under autocast
#   6. bench/grpo_vs_trl.py at 127M parameters: train_grpo.py's step (sampling / judge / loss) against TRL's
#      (needs trl and datasets: wheels in .whl/)
#   7. bench/real_shapes.py: the real 3.75B shapes in train_grpo.py's precision regime
#   8. evaluate.py at 3B text widths (questions per second) and a profile of 3 Con-GRPO steps (torch.profiler)
#
#   bash bench/gpu.sh              # from the project root on a GPU machine; logs in $OUT (default: a new temp folder)
#   SMOKE=1 bash bench/gpu.sh      # the same steps at toy sizes on a CPU (gloo for NCCL), to check the script itself
#
# A GPU machine without the project's transformers (or without trl and datasets, for the benchmarks): bring wheels in
# .whl/ (docs/commands.md); they are installed into a temporary folder and put first on PYTHONPATH.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
PY=${PY:-python3}
D=$(mktemp -d)
if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"  # tests/dist_worker.py imports the project's modules
if [ -z "${SMOKE:-}" ]; then
  N=400; PX=448; H=1024; L=8; TOK=128; BH=2048; BL=36; BHEADS=16; BTOK=128; SHAPES="--max-new-tokens 128"
  ROLL="--prompts 8 --max-new-tokens 128 --repeats 3"; TRL="--size gpu --prompts 4 --max-new-tokens 64 --steps 4"
  BIGBUILD="--dtype bfloat16 --device cuda"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
else
  N=60; PX=112; H=64; L=2; TOK=16; BH=64; BL=2; BHEADS=4; BTOK=16; SHAPES="--tiny --prompts 2 --max-new-tokens 16"
  ROLL="--prompts 2 --max-new-tokens 16 --repeats 1"; TRL="--size tiny --prompts 2 --max-new-tokens 16 --steps 2"
  BIGBUILD=""
fi
T0=$(date +%s)
DEADLINE=${DEADLINE:-540}  # seconds from here
SUMMARY=()
run() {  # name, time limit in seconds, command...: runs it (within the deadline), logs it to $OUT/name.log
  local name=$1 limit=$2 left=$(( DEADLINE - $(date +%s) + T0 ))
  shift 2
  if [ "$left" -lt 15 ]; then SUMMARY+=("$name: skipped, the deadline is reached"); return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name [$(( $(date +%s) - T0 )) s]"
  timeout "$limit" "$@" 2>&1 | grep -v "it/s\]\|s/it\]\|Warning\|warnings.warn\|Loading weights\|Writing model" | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$name: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))") at $(( $(date +%s) - T0 )) s")
}
TORCHRUN1="$PY -m torch.distributed.run --standalone --nproc_per_node 1"  # a process group of one: NCCL on a GPU
rows() {  # the metrics of a run, a line a step, with the figures that matter here
  $PY -c "import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(' '.join(f'{k}={r[k]:.4g}' for k in ('step', 'kl', 'clip_frac', 'reward', 'completion_len', 't_sample', 't_judge', 't_loss', 'peak_mem_gb')))" "$1"
}

$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/versions.txt"

run nccl 45 $TORCHRUN1 tests/dist_worker.py "$D/w"

run e2e 120 bash -c "set -e
$PY synth.py --out $D/data --n-images $N --size $PX --seed 0
$PY tiny.py --out $D/m --corpus $D/data/train.jsonl --hidden $H --layers $L --heads 16 --image-px $PX
$PY train_sft.py --model $D/m --data $D/data/train.jsonl --out $D/sft --full --epochs 0.3 --batch-size 16 --micro-batch 16 --lr 1e-3
$PY evaluate.py --ckpt $D/sft --data $D/data/test.jsonl --out $D/eval --limit 64 --seeds 0 --max-new-tokens $TOK --judge self
head -n 5 $D/eval/results.md
for mode in replicated fsdp; do
  $TORCHRUN1 train_grpo.py --ckpt $D/sft --out $D/torchrun_\$mode --stop-after 2 --max-new-tokens $TOK --lr 1e-5 \
    --log-samples-every 0 \$([ \$mode = fsdp ] && echo --fsdp)
done"

# 8 prompts: one step of 8 x G=8 a run
head -n 8 "$D/data/train.jsonl" > "$D/data/eight.jsonl"
# made on the GPU and written in bf16 (4.5 GB): on the CPU in fp32 (9 GB) it does not fit its time
run widths_model 75 $PY tiny.py --out "$D/big" --corpus "$D/data/train.jsonl" --hidden $BH --layers $BL --heads $BHEADS --image-px $PX \
  $BIGBUILD
BIG="--ckpt $D/big --data $D/data/eight.jsonl --epochs 1 --max-new-tokens $BTOK --log-samples-every 0 --lr 1e-6 ${SMOKE:+--precision bf16}"
run widths_full 60 $PY train_grpo.py $BIG --out "$D/big_full"
run widths_lora 50 $PY train_grpo.py $BIG --out "$D/big_lora" --lora
run widths_fsdp 60 $TORCHRUN1 train_grpo.py $BIG --out "$D/big_fsdp" --fsdp
run sampler 45 $PY bench/sampler_check.py --ckpt "$D/m" --max-new-tokens $TOK
run rollout 45 $PY bench/rollout.py --ckpt "$D/big" $ROLL
run trl 90 $PY bench/grpo_vs_trl.py $TRL
run real_shapes 60 $PY bench/real_shapes.py $SHAPES
run eval_widths 40 $PY evaluate.py --ckpt "$D/big" --data "$D/data/test.jsonl" --out "$D/eval_big" --limit 32 --seeds 0 --judge self \
  --max-new-tokens $BTOK --batch-size 32
run profile 60 $PY train_grpo.py $BIG --out "$D/profile" --lora --epochs 3 --profile

echo "== summary [$(( $(date +%s) - T0 )) s] (logs in $OUT)" | tee "$OUT/summary.txt"
{
  cat "$OUT/versions.txt"; [ -f "$OUT/gpu.txt" ] && cat "$OUT/gpu.txt"
  printf '%s\n' "${SUMMARY[@]}"
  grep -h "broadcast, gradient sum" "$OUT/nccl.log"
  for mode in replicated fsdp; do [ -f "$D/torchrun_$mode/metrics.jsonl" ] && { echo "2 steps under torchrun (NCCL), $mode:"; rows "$D/torchrun_$mode/metrics.jsonl"; }; done
  for mode in full lora fsdp; do [ -f "$D/big_$mode/metrics.jsonl" ] && { echo "Qwen2.5-VL-3B text widths, $mode, step 1:"; rows "$D/big_$mode/metrics.jsonl"; }; done
  grep -h "greedy tokens equal" "$OUT/sampler.log"
  grep -h "x G=\|generate:\|bandwidth" "$OUT/rollout.log"
  grep -h "parameters,\|step: median" "$OUT/trl.log"
  grep -h "Con-GRPO (\|SFT (\|shapes:" "$OUT/real_shapes.log"
  [ -f "$D/eval_big/results.json" ] && $PY -c "import json; r = json.load(open('$D/eval_big/results.json'))['results'][0]
print(f\"evaluate.py at 3B text widths: {1 / r['seconds_per_question']:.1f} questions/s\")"
  [ -f "$D/profile/profile.txt" ] && { echo "profile of Con-GRPO steps 2-3 (LoRA, 3B text widths):"; head -n 20 "$D/profile/profile.txt"; }
} 2>/dev/null | tee -a "$OUT/summary.txt"
