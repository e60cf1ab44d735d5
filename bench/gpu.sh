#!/usr/bin/env bash
# Every GPU figure of the project in one window: one run on one H100 or H200 within DEADLINE (480 s), each step within
# its own time limit, the limits summing to less than the deadline, in priority order (correctness first):
#   nccl          torchrun's process group under NCCL (one process): broadcast, gradient sum, metric sum
#   model_3b      Qwen2.5-VL-3B-Instruct's real architecture (3.75B, 151,936-row head, 2 KV heads, 11,008 MLP, 32-block
#                 1,280-wide vision tower), random weights made on the GPU in bf16 (tiny.py --preset qwen2.5-vl-3b)
#   kl0_full      train_grpo.py, one step of 8 prompts x G=8 at 448 px: step-1 KL and clip fraction must be exactly 0
#   kl0_lora      ... with --lora;   kl0_fsdp: ... with --fsdp under torchrun;   kl0_gc: ... --lora --gradient-checkpointing
#                 (π_θ under autograd and π_SFT under no_grad could pick other attention kernels: a KL above 0 says so
#                 and by how much)
#   sampler       sampler.sample's exactness at the real shapes: greedy = generate, log-probs = completion_logprobs,
#                 CUDA graph = eager
#   qwen3         a Qwen3-VL at 127M (tiny.py --family qwen3-vl, 448 px): step 1 of train_grpo.py, full and LoRA, KL and
#                 clip fraction exactly 0; the sampler's exactness and CUDA graph on its deepstack and interleaved M-RoPE
#   gemma3        the same on a Gemma 3 at 127M (tiny.py --family gemma3): its masks per kind of layer (image block,
#                 sliding window), 1-D padded positions, the chunked log-probs
#   real_shapes   at 448 and 1,008 px (256 and 1,296 image tokens): the Con-GRPO step (LoRA, full), its rollout's tokens/s
#                 against the bandwidth bound and the CUDA graphs' capture time, peak memory; an SFT step
#   e2e           the CLI at 127M parameters: synth -> tiny -> train_sft --full -> evaluate (questions/s)
#   trl           bench/grpo_vs_trl.py at 127M: train_grpo.py's step against TRL's (needs trl and datasets: .whl/)
#
#   bash bench/gpu.sh              # from the project root on a GPU machine; logs in $OUT (default: a new temp folder)
#   SMOKE=1 bash bench/gpu.sh      # the same steps at toy sizes on a CPU (gloo for NCCL), to check the script itself
#
# It ends with one summary to paste into bench/README.md: device, versions, each figure with its unit, and each step's
# planned limit next to the seconds it took (a step cut by its limit or by the deadline says so). A GPU machine without
# the project's transformers (or without trl and datasets): bring wheels in .whl/ (docs/commands.md); they are
# installed into a temporary folder and put first on PYTHONPATH.
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
  PX=448; TOK=32; BIG="--preset qwen2.5-vl-3b --device cuda --dtype bfloat16"; PREC="--precision bf16"
  E2E="--hidden 1024 --layers 8 --heads 16"; SHAPES="--max-new-tokens 128"; TRL="--size gpu --prompts 4 --max-new-tokens 64 --steps 3"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
else
  PX=112; TOK=8; BIG="--hidden 64 --layers 2 --heads 4"; PREC="--precision bf16"  # the bf16 path on the CPU too
  E2E="--hidden 64 --layers 2 --heads 4"; SHAPES="--tiny --prompts 2 --max-new-tokens 8 --image-px 56 112"
  TRL="--size tiny --prompts 2 --max-new-tokens 8 --steps 2"
fi
DEADLINE=${DEADLINE:-480}  # seconds from here: 8 minutes of a 15-minute device window leave room for the start and a rerun
#           step         limit (s)
PLAN=(      nccl         20
            model_3b     35
            kl0_full     40
            kl0_lora     35
            kl0_fsdp     40
            kl0_gc       35
            sampler      30
            qwen3        50
            gemma3       50
            real_shapes  75
            e2e          35
            trl          30 )
declare -A LIMIT; PLANNED=0
for ((i = 0; i < ${#PLAN[@]}; i += 2)); do LIMIT[${PLAN[i]}]=${PLAN[i+1]}; PLANNED=$(( PLANNED + PLAN[i+1] )); done
T0=$(date +%s)
SUMMARY=()
run() {  # name, command...: runs it within its limit and the deadline, logs it to $OUT/name.log
  local name=$1 limit=${LIMIT[$1]} left=$(( DEADLINE - $(date +%s) + T0 )) start=$(date +%s)
  shift
  if [ "$left" -lt 10 ]; then SUMMARY+=("$(printf '%-12s planned %3d s   skipped: the deadline was reached' "$name" "$limit")"); return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name [$(( start - T0 )) s]"
  timeout "$limit" "$@" 2>&1 | grep -v "it/s\]\|s/it\]\|Warning\|warnings.warn\|Loading weights\|Writing model" > "$OUT/$name.log"
  local rc=${PIPESTATUS[0]} took=$(( $(date +%s) - start ))
  tail -n 3 "$OUT/$name.log"
  local how=ok; [ "$rc" != 0 ] && how="FAILED (exit $rc$([ "$rc" = 124 ] && echo ', cut at its limit'))"
  SUMMARY+=("$(printf '%-12s planned %3d s   took %3d s   %s' "$name" "${LIMIT[$name]}" "$took" "$how")")
}
TORCHRUN1="$PY -m torch.distributed.run --standalone --nproc_per_node 1"  # a process group of one: NCCL on a GPU
step1() {  # the figures of step 1 of a train_grpo.py run
  $PY -c "import json,sys
r = json.loads(open(sys.argv[1]).readline())
exact = 'exactly 0' if r['kl'] == 0 and r['clip_frac'] == 0 else 'NOT 0: pi_theta and pi_SFT differ before any update'
print(f\"KL {r['kl']:.3g}, clip fraction {r['clip_frac']:.3g} ({exact}); sampling {r['t_sample']:.2f} s, judge \"
      f\"{r['t_judge']:.2f} s, loss {r['t_loss']:.2f} s, {r['completion_len']:.0f} tokens a completion, peak {r['peak_mem_gb']:.1f} GiB\")" "$1"
}

$PY -c "import torch, transformers, peft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| cuda', torch.version.cuda, torch.cuda.is_available())" > "$OUT/versions.txt"
echo "planned: ${PLANNED} s of limits within a ${DEADLINE} s deadline"

run nccl $TORCHRUN1 tests/dist_worker.py "$D/w"

$PY synth.py --out "$D/data" --n-images 40 --size $PX --seed 0 > /dev/null
head -n 8 "$D/data/train.jsonl" > "$D/data/eight.jsonl"  # one step of 8 prompts x G=8
run model_3b $PY tiny.py --out "$D/big" --corpus "$D/data/train.jsonl" --image-px 1008 $BIG

GRPO="--ckpt $D/big --data $D/data/eight.jsonl --epochs 1 --max-new-tokens $TOK --min-new-tokens $TOK --lr 1e-6 --log-samples-every 0 $PREC"
run kl0_full $PY train_grpo.py $GRPO --out "$D/kl0_full"
run kl0_lora $PY train_grpo.py $GRPO --out "$D/kl0_lora" --lora
run kl0_fsdp $TORCHRUN1 train_grpo.py $GRPO --out "$D/kl0_fsdp" --fsdp
run kl0_gc $PY train_grpo.py $GRPO --out "$D/kl0_gc" --lora --gradient-checkpointing
run sampler $PY bench/sampler_check.py --ckpt "$D/big" --prompts 2 --group-size 2 --max-new-tokens $TOK
for fam in qwen3 gemma3; do  # a family's step 1 full and LoRA (KL exactly 0), then its sampler's exactness
  F="--ckpt $D/$fam --data $D/data/eight.jsonl --epochs 1 --max-new-tokens $TOK --min-new-tokens $TOK --lr 1e-6 --log-samples-every 0 $PREC"
  run $fam bash -c "set -e
$PY tiny.py --family $([ $fam = qwen3 ] && echo qwen3-vl || echo gemma3) --out $D/$fam $E2E --corpus $D/data/train.jsonl --image-px $PX
$PY train_grpo.py $F --out $D/${fam}_full
$PY train_grpo.py $F --out $D/${fam}_lora --lora
$PY bench/sampler_check.py --ckpt $D/$fam --prompts 2 --group-size 2 --max-new-tokens $TOK"
done
run real_shapes $PY bench/real_shapes.py $SHAPES
run e2e bash -c "set -e
$PY tiny.py --out $D/m $E2E --corpus $D/data/train.jsonl --image-px $PX
$PY train_sft.py --model $D/m --data $D/data/train.jsonl --out $D/sft --full --epochs 1 --batch-size 16 --micro-batch 16 --lr 1e-3
$PY evaluate.py --ckpt $D/sft --data $D/data/test.jsonl --out $D/eval --limit 32 --seeds 0 --max-new-tokens $TOK --judge self"
if $PY -c "import trl, datasets" 2>/dev/null; then
  run trl $PY bench/grpo_vs_trl.py $TRL
else
  SUMMARY+=("$(printf '%-12s planned %3d s   skipped: trl and datasets are not installed (bring wheels in .whl/)' trl "${LIMIT[trl]}")")
fi

{
  echo "== bench/gpu.sh summary ($(( $(date +%s) - T0 )) s of a ${DEADLINE} s deadline; ${PLANNED} s of limits planned; logs in $OUT)"
  [ -f "$OUT/gpu.txt" ] && echo "device: $(cat "$OUT/gpu.txt")" || echo "device: cpu (SMOKE)"
  cat "$OUT/versions.txt"
  printf '%s\n' "${SUMMARY[@]}"
  grep -h "broadcast, gradient sum" "$OUT/nccl.log"
  grep -h "parameters (" "$OUT/model_3b.log"
  for mode in full lora fsdp gc; do
    [ -f "$D/kl0_$mode/metrics.jsonl" ] && echo "step 1, $mode: $(step1 "$D/kl0_$mode/metrics.jsonl")"
  done
  grep -h "greedy tokens equal" "$OUT/sampler.log"
  for fam in qwen3 gemma3; do
    for mode in full lora; do
      [ -f "$D/${fam}_$mode/metrics.jsonl" ] && echo "step 1, $fam $mode: $(step1 "$D/${fam}_$mode/metrics.jsonl")"
    done
    grep -h "greedy tokens equal" "$OUT/$fam.log"
  done
  grep -h "bandwidth:\|SFT (\|Con-GRPO (\|out of GPU memory\|do not fit" "$OUT/real_shapes.log"
  [ -f "$D/eval/results.json" ] && $PY -c "import json; r = json.load(open('$D/eval/results.json'))['results'][0]
print(f\"evaluate.py, e2e model: {1 / r['seconds_per_question']:.1f} questions/s\")"
  grep -h "parameters,\|step: median" "$OUT/trl.log"
} 2>/dev/null | tee "$OUT/summary.txt"
