"""Stage 2 of MedAD-R1, Reasoning Reinforcement: Con-GRPO (Eq. 2-8), a hand-written loop.

Con-GRPO in one paragraph: for every prompt (image I, question Q) sample a group of G completions
Y = <think>T</think><answer>A</answer> from the policy π_θ; score each with R = λ_fmt R_fmt + λ_acc R_acc +
λ_con R_con (Eq. 3-6), where R_con = 1 iff a judge that reads only Q and the thought T deduces the model's own
answer A; the advantage of a completion is its reward minus its group's mean (Eq. 7); then maximise the clipped
per-token ratio objective with a KL penalty to π_SFT (Eq. 8). One optimizer step per batch of samples.

Choices where the paper is silent or ambiguous, each with the flag that changes it:
- The ratio r_t = π_θ / π_SFT is taken against the frozen SFT policy, as Eq. 8 writes it (--ratio-ref sft).
  Standard GRPO (DeepSeekMath, TRL) takes it against the sampling policy π_old: --ratio-ref old.
- KL_t is the k3 estimator exp(logπ_SFT − logπ_θ) − (logπ_SFT − logπ_θ) − 1, as in DeepSeekMath; β = 0.04.
- The advantage is R − mean(R) (Eq. 7), not divided by the group's std (--scale-rewards divides).
- The loss is averaged over each completion's tokens, then over completions (--loss-agg seq); --loss-agg token
  averages over all tokens of the batch, --loss-agg sum is Eq. 8's plain sum over tokens.
- Tokens after the first end-of-turn token are masked out; that token counts (the policy learns to stop). R_fmt
  requires that token: a completion cut at --max-new-tokens is not well formed; --mask-truncated also leaves it out
  of the loss.
- Without --lora the policy is fully fine-tuned (the paper) and π_SFT is a frozen copy; with --lora a LoRA is
  trained on top of π_SFT and π_SFT is the same weights with the adapter disabled (no second copy).
- --judge self reuses π_SFT's weights as the judge, text-only. The judge reads the whole thought (the paper);
  --judge-view hide-conclusion hides its concluding part, so that R_con pays for reasoning from which the answer
  follows, not for the answer restated (docs/consistency.md). The lr is constant after
  an optional warm-up.
- bf16 as the paper says, as mixed precision (--precision bf16, the default on GPUs that support it): autocast
  around forward passes, fp32 weights for a fully fine-tuned policy (a bf16 weight cannot take the updates lr 1e-6
  makes), and π_SFT in the same regime, so that before the first update r_t = 1 and KL = 0 exactly. The LM head runs
  in fp32: log-probs, and samples, come from fp32 logits.
- Speed without changing the math: in the loss each prompt (its image included) runs once and its KV cache serves
  its G completions (model.group_logprobs), for π_θ and π_SFT alike; with torchrun each rank takes whole groups
  and gradients are summed over ranks before each step. --fsdp shards the policy and π_SFT over the ranks (FSDP2),
  for a full fine-tune too large for one GPU.
- The log-probs are those of π_θ itself (temperature 1); sampling at another --temperature is then off-policy.

    python train_grpo.py --ckpt sft_out                 # the SFT run's training data, recorded in sft_out/args.json
    python train_grpo.py --ckpt sft_out --data train.jsonl --out grpo_out
    torchrun --nproc_per_node 8 train_grpo.py --ckpt sft_out --out grpo_out --fsdp      # 8 GPUs, sharded
    python train_grpo.py --ckpt sft_out --eval-data test.jsonl --eval-every 50          # + held-out accuracy
"""
import argparse
import json
import math
import os
import time
from contextlib import nullcontext

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # read when torch loads OpenMP: docs/scale.md, "A shared CPU"
import torch  # noqa: E402
from tqdm import tqdm

import answers
import data
import distributed as D
import model as M
import precision
import rewards
import run
import sampler


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="sft_out", help="start policy π_SFT: an SFT output folder, any model folder, "
                   "or a hub id (the base model gives Table 2's RL-only row) (default: %(default)s)")
    p.add_argument("--data", help="training JSONL (the schema in docs/data.md); default: "
                   "the one the SFT run in --ckpt used (its args.json)")
    p.add_argument("--out", default="grpo_out", help="output folder (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=8, help="G completions per prompt (paper: 8)")
    p.add_argument("--prompts-per-step", type=int, default=8, help="prompts per step (paper: 8); x G = the global batch "
                   "of completions (paper: 64 = 8 x 8). "
                   "Every step takes this many: an epoch's last batch is filled up from the start of its shuffled "
                   "order, so with torchrun each rank always samples whole groups for the same number of prompts")
    p.add_argument("--epochs", type=float, default=1, help="passes over the prompts (paper: 1)")
    p.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (paper: 1e-6)")
    p.add_argument("--warmup-ratio", type=float, default=0.0, help="share of steps of linear warm-up (default: 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--beta", type=float, default=0.04, help="β, the KL coefficient of Eq. 8 (paper: 0.04)")
    p.add_argument("--epsilon", type=float, default=0.2, help="ε, the clipping range of Eq. 8 (default: 0.2)")
    p.add_argument("--lambda-fmt", type=float, default=1 / 3, help="λ_fmt of Eq. 3 (paper: 1/3; Table 3)")
    p.add_argument("--lambda-acc", type=float, default=1 / 3, help="λ_acc of Eq. 3 (paper: 1/3; Table 3)")
    p.add_argument("--lambda-con", type=float, default=1 / 3, help="λ_con of Eq. 3 (paper: 1/3; Table 3)")
    p.add_argument("--judge-view", choices=sorted(rewards.judge_views()), default="full", help="what the judge reads of "
                   "a thought: all of it (the paper) or all but its concluding part, so that R_con pays for reasoning "
                   "from which the answer follows rather than the answer restated (default: %(default)s)")
    p.add_argument("--eval-data", help="held-out JSONL: every --eval-every steps the policy answers its first "
                   "--eval-samples questions greedily, scored as evaluate.py scores them, consistency by the training judge")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate on --eval-data every N steps and at the end (0: never)")
    p.add_argument("--eval-samples", type=int, default=64, help="questions per held-out evaluation (default: %(default)s)")
    p.add_argument("--judge", default="self", help="F of Eq. 6: 'self' (π_SFT's weights, text-only) or a causal "
                   "LM folder / hub id (default: %(default)s)")
    p.add_argument("--judge-max-tokens", type=int, default=768, help="thought tokens the judge reads (the end)")
    p.add_argument("--ratio-ref", choices=["sft", "old"], default="sft", help="ratio of Eq. 8 against π_SFT (paper) "
                   "or the sampling policy (standard GRPO) (default: %(default)s)")
    p.add_argument("--loss-agg", choices=["seq", "token", "sum"], default="seq", help="mean over each completion's "
                   "tokens then completions / over all tokens / sum over tokens (default: %(default)s)")
    p.add_argument("--scale-rewards", action="store_true", help="divide advantages by the group's std (DeepSeekMath)")
    p.add_argument("--iterations", type=int, default=1, help="μ: updates per batch of samples (default: 1)")
    p.add_argument("--lora", action="store_true", help="train a LoRA on top of π_SFT instead of all weights")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank with --lora (default: %(default)s)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha with --lora (default: %(default)s)")
    p.add_argument("--lora-targets", default=M.LORA_TARGETS, help="projections that get LoRA (default: %(default)s)")
    p.add_argument("--train-vision", action="store_true", help="train the vision tower too (frozen by default)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="completion length limit (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    p.add_argument("--min-new-tokens", type=int, default=0, help="no end of turn before this many tokens (0: as "
                   "π_θ decides; > 0 samples off-policy, for benchmarks that need a fixed length)")
    p.add_argument("--mask-truncated", action="store_true", help="leave completions cut at --max-new-tokens out of "
                   "the loss (TRL's mask_truncated_completions); they are scored either way, and R_fmt gives them 0")
    p.add_argument("--micro-batch", type=int, default=8, help="completions per forward in the loss, rounded to whole "
                   "groups (default: 8)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (default: %(default)s)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="bf16: autocast over fp32 trained weights (the "
                   "paper's bf16); default: bf16 where the GPU supports it, else fp32")
    p.add_argument("--fsdp", action="store_true", help="shard the policy, its gradients and AdamW state, and π_SFT "
                   "over the ranks (FSDP2; under torchrun, full fine-tuning only): a full fine-tune of the 3B model "
                   "does not fit one 80 GB GPU replicated")
    p.add_argument("--max-pixels", type=int, help=data.MAX_PIXELS_HELP)
    p.add_argument("--log-samples-every", type=int, default=10, help="write completions to samples.jsonl every N "
                   "steps (0: never)")
    p.add_argument("--save-every", type=int, default=0, help="write OUT/checkpoint-STEP every N steps (0: never)")
    p.add_argument("--dist-timeout", type=float, default=60, help="minutes a collective waits under torchrun before the "
                   "job aborts: rank 0 writing a checkpoint holds the others at a barrier (NCCL's default is 10) "
                   "(default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in OUT")
    p.add_argument("--stop-after", type=int, default=0, help="stop after this step, with a checkpoint, as if "
                   "interrupted (0: run to the end); the schedule is unchanged")
    p.add_argument("--profile", action="store_true", help="profile steps 2-3 with torch.profiler: OUT/profile.txt "
                   "(the operators that took the most time) and OUT/trace.json")
    p.add_argument("--report-to", choices=["none", "tensorboard", "wandb"], default="none", help="also send every "
                   "metrics.jsonl row (and sampled completions, as a text table) to TensorBoard (OUT/tensorboard) or "
                   "W&B (OUT/wandb; WANDB_MODE=offline without network); needs pip install -r requirements-report.txt "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompt order and sampling")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the models' own code from the hub")
    return p.parse_args(argv)


# ---- the math: Eq. 7 and Eq. 8 ----

def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = False) -> torch.Tensor:
    """Eq. 7: Â_i = R_i − mean_j R_j over each group of G consecutive completions (÷ std with `scale`)."""
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(1, keepdim=True) + 1e-4)
    return advantages.flatten()


def grpo_loss(logps, ref_logps, advantages, mask, *, epsilon: float = 0.2, beta: float = 0.04,
              old_logps=None, agg: str = "seq"):
    """Eq. 8, negated to be minimised: −[min(r_t Â, clip(r_t, 1−ε, 1+ε) Â) − β KL_t] over completion tokens.

    logps, ref_logps, mask: [B, T]; advantages: [B]. r_t is taken against π_SFT (ref_logps) unless old_logps
    (the sampling policy's) are given. KL_t is the k3 estimator of KL(π_θ || π_SFT). Masked positions are selected
    out before exp(), never multiplied by 0 (inf · 0 = NaN). Returns the loss and the token means of KL and of the
    clipped share, with their token count.
    """
    mask = mask.bool()
    log_ratio = torch.where(mask, logps - (ref_logps if old_logps is None else old_logps), 0.0)
    ratio = torch.exp(log_ratio)
    A = advantages.unsqueeze(1)
    surrogate = torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    log_ref_ratio = torch.where(mask, ref_logps - logps, 0.0)
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
    per_token = torch.where(mask, -(surrogate - beta * kl), 0.0)
    tokens = mask.sum(1).clamp(min=1)
    if agg == "seq":
        loss = (per_token.sum(1) / tokens).mean()
    elif agg == "token":
        loss = per_token.sum() / mask.sum().clamp(min=1)
    elif agg == "sum":
        loss = per_token.sum(1).mean()
    else:
        raise ValueError(f"unknown loss aggregation {agg!r}: seq, token or sum")
    with torch.no_grad():  # 0-d tensors: read once a step, not a host sync per micro-batch
        clipped = mask & (((ratio < 1 - epsilon) & (A < 0)) | ((ratio > 1 + epsilon) & (A > 0)))
        n = mask.sum()
        stats = {"kl": torch.where(mask, kl, 0.0).sum() / n.clamp(min=1), "clip_frac": clipped.sum() / n.clamp(min=1),
                 "tokens": n}
    return loss, stats


# ---- the pieces of a step ----

def reference_logprobs(policy, reference, prompt, ids, mask, group_size, share_prompt: bool = True):
    """log π_SFT of the completions: the frozen copy, or the policy with its LoRA disabled; by the same path as π_θ's
    (share_prompt), so that before the first update the two are equal to the bit."""
    with torch.no_grad(), (policy.disable_adapter() if reference is None else nullcontext()):
        return M.group_logprobs(policy if reference is None else reference, prompt, ids, mask, group_size, share_prompt)


def policy_step(policy, reference, optimizer, scheduler, params, prompt, ids, mask, advantages, args):
    """μ optimizer steps on one batch of samples, accumulated over micro-batches of whole groups; returns KL and clip
    fraction as token means over the batch of every rank, the last update's lr and grad norm. Each prompt runs once
    per micro-batch and its KV cache serves its G completions (model.group_logprobs). The loss is divided by the
    global number of completions (tokens with --loss-agg token) and gradients are summed over ranks: N ranks take
    the step one process would."""
    G, share = args.group_size, not args.gradient_checkpointing  # checkpointing keeps no KV cache to share
    per_chunk = max(1, args.micro_batch // G)  # prompts per micro-batch
    chunks = [(slice(i, i + per_chunk), slice(i * G, (i + per_chunk) * G)) for i in range(0, len(prompt["input_ids"]), per_chunk)]
    with precision.head_cast_once(policy, reference):  # the LM head's bf16 copy made once (again after an update)
        with precision.autocast(ids.device, args.precision):  # forward passes only, never around optimizer.step()
            ref = [reference_logprobs(policy, reference, M.take(prompt, p), ids[c], mask[c], G, share) for p, c in chunks]
        old = [None] * len(chunks)
        count = (lambda c: mask[c].sum()) if args.loss_agg == "token" else (lambda c: len(ids[c]))
        total = D.all_reduce_sum(float(sum(count(c) for _, c in chunks)))
        kl_sum = clipped = tokens = 0.0  # over every token of every update, for the log
        stats = {}
        for _ in range(args.iterations):
            total_loss = 0.0
            for i, (p, c) in enumerate(chunks):
                with precision.autocast(ids.device, args.precision):
                    logps = M.group_logprobs(policy, M.take(prompt, p), ids[c], mask[c], G, share)
                if args.ratio_ref == "old" and old[i] is None:
                    old[i] = logps.detach()  # the first pass is π_old, the sampling policy; kept for μ > 1
                loss, s = grpo_loss(logps, ref[i], advantages[c], mask[c], epsilon=args.epsilon, beta=args.beta,
                                    old_logps=old[i], agg=args.loss_agg)
                loss = loss * count(c) / total
                loss.backward()
                total_loss = total_loss + loss.detach()
                kl_sum, clipped = kl_sum + s["kl"] * s["tokens"], clipped + s["clip_frac"] * s["tokens"]
                tokens = tokens + s["tokens"]
            if D.all_reduce_sum(float(not torch.isfinite(total_loss))):  # one host sync an update; every rank stops
                raise FloatingPointError(f"the loss is not finite on some rank ({float(total_loss)} here): stopping "
                                         f"before the update. The last good checkpoint is "
                                         f"{run.latest_checkpoint(args.out)}; try a lower --lr")
            D.sync_grads(params)
            stats["grad_norm"] = D.clip_grad_norm(params, args.max_grad_norm)
            stats["lr"] = optimizer.param_groups[0]["lr"]  # the rate this update uses (the scheduler steps after it)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    sums = D.all_reduce_sum({"kl": float(kl_sum), "clip_frac": float(clipped), "tokens": float(tokens)})
    return {**stats, "kl": sums["kl"] / max(sums["tokens"], 1), "clip_frac": sums["clip_frac"] / max(sums["tokens"], 1)}


@torch.no_grad()
def evaluate_held_out(policy, processor, judge, records, args, rank) -> dict:
    """Greedy answers to held-out questions, scored as evaluate.py scores them, consistency by the training judge."""
    policy.eval()
    with precision.autocast(policy.device, args.precision), D.unsharded(policy), D.unsharded(judge.model):
        if rank != 0 and not args.fsdp:
            return {}
        held_out = answers.metrics(answers.answer(policy, processor, records, judge=judge, greedy=True, seed=None,
                                                  max_new_tokens=args.max_new_tokens, judge_view=args.judge_view))
    return {"eval_accuracy_greedy": held_out["overall"], "eval_format_greedy": held_out["format_rate"],
            "eval_consistency_greedy": held_out["consistency_rate"]}


def sft_data(ckpt: str) -> str:
    """The training JSONL recorded by the SFT run that wrote `ckpt`, so that `--ckpt sft_out` alone is enough."""
    recorded = os.path.join(ckpt, "args.json")
    if os.path.isfile(recorded) and json.load(open(recorded)).get("data"):
        return json.load(open(recorded))["data"]
    raise SystemExit(f"train_grpo.py: --data is needed: {recorded} does not name the SFT run's training data")


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = D.init_distributed(args.dist_timeout)
    args.precision = args.precision or M.default_precision(device)
    args.data = args.data or sft_data(args.ckpt)
    # recorded absolute in args.json: evaluate.py judges every row with this run's judge
    args.ckpt, args.judge = (os.path.abspath(p) if os.path.isdir(p) else p for p in (args.ckpt, args.judge))
    records = data.load_jsonl(args.data)  # bad data fails here, before any model is loaded
    eval_records = data.load_jsonl(args.eval_data)[:args.eval_samples] if args.eval_data else []
    G, P = args.group_size, args.prompts_per_step
    if P % world:
        raise ValueError(f"--prompts-per-step {P} must be a multiple of the world size {world}")
    if args.fsdp and args.lora:
        raise SystemExit("--fsdp shards a full fine-tune; a LoRA on π_SFT fits one GPU replicated: drop one of them")
    torch.manual_seed(args.seed + rank)  # each rank its own random stream; the weights are rank 0's (broadcast)

    # ---- models: π_θ, π_SFT (in π_θ's precision regime: r_t = 1 before the first update), the judge ----
    dtype = precision.weights_dtype(args.precision, trained=not args.lora)
    sft, processor = M.load_model(args.ckpt, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code)
    data.limit_pixels(processor, args.max_pixels)
    if args.lora:
        policy, reference = M.add_lora(sft, args.lora_r, args.lora_alpha, 0.0, args.lora_targets, args.train_vision), None
    else:
        policy = sft.requires_grad_(True)  # a merged adapter comes back frozen
        reference = M.load_model(args.ckpt, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code)[0]
        reference.requires_grad_(False)
        for tower in M.vision_modules(policy):
            tower.requires_grad_(args.train_vision)
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable({"use_reentrant": False})
        if args.lora:
            policy.enable_input_require_grads()
    for net in (policy, reference):
        if net is not None:
            precision.fp32_logits(net)
            D.broadcast_parameters(net)
            if args.fsdp:
                D.shard(net)
    if args.judge == "self":  # π_SFT's weights: the frozen copy, or the policy with the adapter off
        judge = rewards.Judge(policy if reference is None else reference, processor.tokenizer, max_thought_tokens=args.judge_max_tokens,
                              disable_adapter=args.lora)
    else:
        judge_model, judge_tokenizer = M.load_judge(args.judge, device=device, trust_remote_code=args.trust_remote_code,
                                                    dtype=precision.weights_dtype(args.precision, trained=False))
        judge = rewards.Judge(precision.fp32_logits(judge_model), judge_tokenizer, max_thought_tokens=args.judge_max_tokens)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(records) / P)
    total_steps = math.ceil(args.epochs * steps_per_epoch)
    scheduler = run.lr_schedule(optimizer, total_steps * args.iterations, args.warmup_ratio, decay="constant")
    step = run.start_step(args.out, args.resume, policy, optimizer, scheduler)
    weights = dict(lambda_fmt=args.lambda_fmt, lambda_acc=args.lambda_acc, lambda_con=args.lambda_con)
    special = sampler.special_tokens(processor.tokenizer)  # a completion that writes one is not well formed (Eq. 4)
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        json.dump(vars(args), open(os.path.join(args.out, "args.json"), "w"), indent=2)
        metrics = run.open_log(os.path.join(args.out, "metrics.jsonl"), step)
        report = run.reporter(args.report_to, args.out, vars(args))  # the same rows, on a dashboard
        samples_log = run.open_log(os.path.join(args.out, "samples.jsonl"), step)
        print(f"Con-GRPO: {len(records)} prompts, {total_steps} steps of {P} prompts x G={G}, "
              f"{M.count_parameters(policy):,} parameters ({'sharded' if args.fsdp else 'replicated'}), "
              f"{args.precision}, {world} process(es) on {device}" + (f", resumed at step {step}" if step else ""))

    bar = tqdm(total=total_steps, initial=step, desc="Con-GRPO", disable=rank != 0, dynamic_ncols=True)
    prof = run.profiler(args.out if args.profile and rank == 0 else None)
    while step < total_steps:
        batch = data.epoch_batches(len(records), P, args.seed, step // steps_per_epoch)[step % steps_per_epoch]
        mine = [records[i] for i in batch[rank::world]]  # each rank samples whole groups for its prompts

        # ---- sample G completions per prompt from π_θ ----
        t0 = time.time()
        run.reset_peak_memory()  # peak_mem_gb: this step's
        policy.eval()
        prompt = {k: v.to(device) for k, v in data.prompt_batch(processor, mine).items()}
        with precision.autocast(device, args.precision), D.unsharded(policy):  # FSDP: gathered once, not once per token
            if not args.train_vision:  # the frozen tower sees the same pixels in sampling, π_SFT and π_θ: run it once
                prompt["image_features"] = M.image_features(policy, prompt)
            rollout = sampler.sample(policy, processor, prompt, group_size=G, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_p=args.top_p, min_new_tokens=args.min_new_tokens,
                               seed=args.seed * 1_000_003 + step * world + rank)
        ids, mask, texts, ended = rollout["completion_ids"], rollout["completion_mask"], rollout["texts"], rollout["ended"]
        t1 = time.time()

        # ---- score (Eq. 3-6) and advantages (Eq. 7) ----
        asked = [r for r in mine for _ in range(G)]  # the question of each completion
        # FSDP: gathered, since ranks judge different counts; the judge's head cast to bf16 once for the batch
        with precision.autocast(device, args.precision), D.unsharded(judge.model), precision.head_cast_once(judge.model):
            scores = rewards.score(texts, asked, judge, ended=ended.tolist(), special_tokens=special,
                                   judge_view=args.judge_view, **weights)
        advantages = group_advantages(scores["reward"], G, args.scale_rewards).to(device)
        loss_mask = mask * ended[:, None] if args.mask_truncated else mask  # a cut-off completion out of the loss
        t2 = time.time()

        # ---- loss (Eq. 8) and optimizer steps ----
        policy.train()
        stats = policy_step(policy, reference, optimizer, scheduler, params, prompt, ids, loss_mask, advantages, args)
        step += 1
        t3 = time.time()

        # ---- log ----
        groups = scores["reward"].view(-1, G)
        local = {"reward": scores["reward"].mean().item(), "accuracy": scores["accuracy"].mean().item(),
                 "format_rate": scores["format"].mean().item(), "consistency_rate": scores["consistency"].mean().item(),
                 "stated_rate": scores["stated"].mean().item(),
                 "completion_len": mask.sum(1).float().mean().item(), "truncated_rate": 1 - ended.float().mean().item(),
                 "zero_adv_groups": (groups.max(1).values == groups.min(1).values).float().mean().item()}
        row = {"step": step, "epoch": round(step / steps_per_epoch, 4)}
        row.update({k: v / world for k, v in D.all_reduce_sum(local).items()})  # every rank has as many completions
        row.update({**stats, "t_sample": t1 - t0, "t_judge": t2 - t1, "t_loss": t3 - t2, "peak_mem_gb": run.peak_memory_gb()})
        if args.eval_every and eval_records and (step % args.eval_every == 0 or step == total_steps):
            row.update(evaluate_held_out(policy, processor, judge, eval_records, args, rank))
        if rank == 0:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            report.log(row)
            if args.log_samples_every and (step % args.log_samples_every == 0 or step == 1):
                group = [{"step": step, "id": mine[j // G]["id"], "answer": mine[j // G]["answer"], "completion": texts[j],
                          "reward": scores["reward"][j].item(), "judge": scores["judge_letters"][j]}
                         for j in range(min(len(texts), G))]  # the first group, whole
                samples_log.writelines(json.dumps(s) + "\n" for s in group)
                samples_log.flush()
                report.samples(group, step)
            bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['accuracy']:.3f}", con=f"{row['consistency_rate']:.3f}")
            bar.update(1)
        prof.step()
        if run.checkpoint_and_stop(args.out, step, policy, optimizer, scheduler, save_every=args.save_every,
                                 stop_after=args.stop_after):
            break
    prof.stop()
    bar.close()
    if rank == 0:
        report.close()

    # ---- output: π_θ as a full model (a GRPO LoRA is merged into π_SFT), loadable like any model ----
    if step == total_steps:
        run.save_model(args.out, M.merge_lora(policy) if args.lora else policy, processor,
                     torch.bfloat16 if args.precision == "bf16" else torch.float32)
        run.mark_done(args.out)
        if rank == 0:
            print(f"wrote {args.out}")
    D.finish()
    return policy


if __name__ == "__main__":
    main()
