"""Stage 1 of MedAD-R1, Cognitive Injection: LoRA SFT of a VLM on <think>CoT</think><answer>letter</answer>.

Minimises the negative log-likelihood of the target given the system prompt, the image, the question and its
options (Eq. 1), averaged over the target tokens of each global batch. Only target tokens count: the system
prompt, the user turn, the image tokens and the padding never do; the end-of-turn token after the target does,
so that the model learns to stop. The vision tower is frozen (LoRA on the language model) unless --train-vision.

Choices where the paper is silent: LoRA r=16, alpha=32, dropout 0.05 on the language model's attention and MLP
projections; linear warm-up over 3% of the steps then cosine decay to 0; gradient clipping at 1.0; no weight decay.

    python train_sft.py --model Qwen/Qwen2.5-VL-3B-Instruct --data train.jsonl --out sft_out
    python train_sft.py --model Qwen/Qwen3-VL-4B-Instruct --data train.jsonl --out sft_out   # docs/families.md
    torchrun --nproc_per_node 8 train_sft.py --model ... --data train.jsonl --out sft_out   # same global batch

bf16 as the paper says, as mixed precision (--precision bf16, the default on GPUs that support it): autocast around
forward passes, the LoRA's base weights in bf16, trained weights in fp32, the LM head in fp32. With torchrun each
rank takes its share of every global batch and starts from rank 0's weights; --fsdp (with --full) shards the model,
its gradients and AdamW state over the ranks (FSDP2).

The output folder holds the LoRA adapter (adapter_model.safetensors + adapter_config.json), the processor and
args.json; `train_grpo.py --ckpt sft_out` and `evaluate.py --ckpt sft_out` read it as it is.

Two modes beyond the paper, for a model trained from scratch (the CPU demo's tiny one): --full fine-tunes every
weight and writes a full model; --judge trains the consistency judge F of Eq. 6 on the same data (text-only: the
question, the options and the CoT in, the right letter out, by rewards.Judge's prompt), for --judge OUT in
train_grpo.py and evaluate.py.

    python train_sft.py --model tiny --data train.jsonl --out judge --judge --full
"""
import argparse
import json
import math
import os
import time
from functools import partial

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
    p.add_argument("--model", default=M.DEFAULT_MODEL, help="base model: hub id or folder (default: %(default)s)")
    p.add_argument("--data", required=True, help="training JSONL (the schema in docs/data.md; every record with a "
                   "`cot`)")
    p.add_argument("--out", default="sft_out", help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=2, help="passes over the data (paper: 2)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW (paper: 1e-4)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch in examples (paper: 64). Every step "
                   "takes this many: an epoch's last batch is filled up from the start of its shuffled order")
    p.add_argument("--micro-batch", type=int, default=8, help="examples per forward; the rest is accumulation")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--warmup-ratio", type=float, default=0.03, help="share of steps of linear warm-up before "
                   "cosine decay to 0 (default: %(default)s)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (default: %(default)s)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: %(default)s)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default: %(default)s)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default: %(default)s)")
    p.add_argument("--lora-targets", default=M.LORA_TARGETS, help="projections that get LoRA (default: %(default)s)")
    p.add_argument("--train-vision", action="store_true", help="LoRA on the vision tower too (frozen by default)")
    p.add_argument("--full", action="store_true", help="fine-tune all weights instead of a LoRA (fp32 weights, bf16 "
                   "autocast on GPUs); the vision tower too with --train-vision. The paper: LoRA. For a model "
                   "trained from scratch, such as the CPU demo's tiny one, that has nothing for a LoRA to adapt")
    p.add_argument("--judge", action="store_true", help="train a consistency judge F (Eq. 6) instead: text-only, "
                   "the judge prompt of rewards.py, cross-entropy of the right letter among the four given the "
                   "question, the options and the CoT. Use with --full (or --merge) and pass OUT to --judge")
    p.add_argument("--group-by-image", action="store_true", help="shuffle images, not questions: the questions of "
                   "an image come one after the other and share one pass of the vision tower in a micro-batch "
                   "(a batch of 16 holds about 4 images of MedAD's ~4 questions each; the tower's forward and backward "
                   "run once an image, not once a question; not for --judge, which reads no image). Default: questions "
                   "shuffled one by one")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="bf16: autocast, the LoRA's base in bf16 and trained "
                   "weights in fp32 (the paper's bf16); default: bf16 where the GPU supports it, else fp32")
    p.add_argument("--fsdp", action="store_true", help="with --full under torchrun: shard the model, its gradients and "
                   "AdamW state over the ranks (FSDP2)")
    p.add_argument("--max-pixels", type=int, help=data.MAX_PIXELS_HELP)
    p.add_argument("--eval-data", help="held-out JSONL for the periodic evaluation")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: never)")
    p.add_argument("--eval-samples", type=int, default=64, help="questions per evaluation (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="greedy decoding length in evaluation")
    p.add_argument("--save-every", type=int, default=0, help="write OUT/checkpoint-STEP every N steps (0: never)")
    p.add_argument("--dist-timeout", type=float, default=60, help="minutes a collective waits under torchrun before the "
                   "job aborts: rank 0 writing a checkpoint holds the others at a barrier (NCCL's default is 10) "
                   "(default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in OUT")
    p.add_argument("--stop-after", type=int, default=0, help="stop after this step, with a checkpoint, as if "
                   "interrupted (0: run to the end); the schedule is unchanged")
    p.add_argument("--merge", action="store_true", help="also write the merged full model to OUT/merged")
    p.add_argument("--report-to", choices=["none", "tensorboard", "wandb"], default="none", help="also send every "
                   "metrics.jsonl row (and sampled completions, as a text table) to TensorBoard (OUT/tensorboard) or "
                   "W&B (OUT/wandb; WANDB_MODE=offline without network); needs pip install -r requirements-report.txt "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, LoRA init and dropout")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code from the hub")
    return p.parse_args(argv)


def sft_loss(policy, prompt, target_ids, target_mask, n_tokens: float, images: list | None = None):
    """Eq. 1: −Σ log π_θ(Y* | I, Q) over the target tokens, divided by the global batch's target token count. With
    `images` (a key per row) the rows that show one image share one pass of the vision tower."""
    if images is not None:
        prompt = M.shared_image_features(policy, prompt, images)
    logps = M.completion_logprobs(policy, prompt, target_ids, target_mask)
    return -(logps * target_mask).sum() / n_tokens


def judge_loss(judge, records: list[dict], n_examples: float):
    """Trains F of Eq. 6: −log of the right letter's share among the four, from the question, options and CoT."""
    logits = judge.letter_logits([r["question"] for r in records], [r["options"] for r in records],
                                 [r["cot"] for r in records])
    right = torch.tensor([data.LETTERS.index(r["answer"]) for r in records], device=logits.device)
    return torch.nn.functional.cross_entropy(logits.float(), right, reduction="sum") / n_examples


@torch.no_grad()
def evaluate_sft(policy, processor, records, micro_batch: int, max_new_tokens: int) -> dict:
    """Held-out loss per target token, and accuracy and format rate of greedy answers, scored as evaluate.py scores
    them (answers.py)."""
    policy.eval()
    nll = tokens = 0
    end = sampler.end_of_turn(processor)
    for i in range(0, len(records), micro_batch):
        chunk = records[i:i + micro_batch]
        prompt = {k: v.to(policy.device) for k, v in data.prompt_batch(processor, chunk).items()}
        ids, mask = (t.to(policy.device) for t in data.target_batch(processor.tokenizer, chunk, end))
        nll += -(M.completion_logprobs(policy, prompt, ids, mask) * mask).sum().item()
        tokens += mask.sum().item()
    held_out = answers.metrics(answers.answer(policy, processor, records, greedy=True, seed=None,
                                              max_new_tokens=max_new_tokens, batch_size=micro_batch))
    policy.train()
    return {"eval_loss": nll / tokens, "eval_accuracy_greedy": held_out["overall"],
            "eval_format_greedy": held_out["format_rate"]}


@torch.no_grad()
def evaluate_judge(judge, records, micro_batch: int) -> dict:
    """Held-out loss and accuracy of the judge's letter from the gold CoTs (the right letter)."""
    judge.model.eval()
    nll = correct = 0.0
    for i in range(0, len(records), micro_batch):
        chunk = records[i:i + micro_batch]
        nll += judge_loss(judge, chunk, 1.0).item()
        letters = judge([r["question"] for r in chunk], [r["options"] for r in chunk], [r["cot"] for r in chunk])
        correct += sum(a == r["answer"] for a, r in zip(letters, chunk))
    judge.model.train()
    return {"eval_loss": nll / len(records), "eval_judge_accuracy": correct / len(records)}


def main(argv=None):
    args = parse_args(argv)
    args.data = os.path.abspath(args.data)  # recorded in args.json: train_grpo.py --ckpt OUT finds it there
    rank, world, device = D.init_distributed(args.dist_timeout)
    args.precision = args.precision or M.default_precision(device)
    records = data.load_jsonl(args.data)  # bad data fails here, before any model is loaded
    data.check_cots(records)  # targets a reward would score 0 (an empty CoT, tags inside it) are refused
    eval_records = data.load_jsonl(args.eval_data)[:args.eval_samples] if args.eval_data else []
    if args.batch_size % (world * args.micro_batch):
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of world size x --micro-batch "
                         f"({world} x {args.micro_batch})")
    if args.fsdp and not args.full:
        raise SystemExit("--fsdp shards a full fine-tune (--full); a LoRA fits one GPU replicated")
    if args.fsdp and args.group_by_image:  # the shared tower runs outside the model's forward, which FSDP2 gathers for
        raise SystemExit("--group-by-image runs the vision tower outside the model's forward, where FSDP2 does not "
                         "gather its weights: drop one of --group-by-image and --fsdp")
    torch.manual_seed(args.seed + rank)  # each rank its own dropout; the weights are rank 0's (broadcast below)

    # ---- model: the base, LoRA on the language model (or all weights with --full), AdamW ----
    base, processor = M.load_model(args.model, device=device, dtype=precision.weights_dtype(args.precision, trained=args.full),
                                   trust_remote_code=args.trust_remote_code)
    data.limit_pixels(processor, args.max_pixels)
    if args.full:
        policy = base.requires_grad_(True)
        for tower in M.vision_modules(policy):
            tower.requires_grad_(args.train_vision)
    else:
        policy = M.add_lora(base, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets, args.train_vision)
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable({"use_reentrant": False})
        if not args.full:
            policy.enable_input_require_grads()
    D.broadcast_parameters(precision.fp32_logits(policy))
    if args.fsdp:
        D.shard(policy)
    judge = rewards.Judge(policy, processor.tokenizer) if args.judge else None
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(records) / args.batch_size)
    total_steps = math.ceil(args.epochs * steps_per_epoch)
    scheduler = run.lr_schedule(optimizer, total_steps, args.warmup_ratio)
    step = run.start_step(args.out, args.resume, policy, optimizer, scheduler)
    stage = "Judge" if args.judge else "SFT"
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        json.dump(vars(args), open(os.path.join(args.out, "args.json"), "w"), indent=2)
        metrics = run.open_log(os.path.join(args.out, "metrics.jsonl"), step)
        report = run.reporter(args.report_to, args.out, vars(args))  # the same rows, on a dashboard
        trainable = sum(p.numel() for p in params)  # DTensors count their whole size
        print(f"{stage}: {len(records)} examples, {total_steps} steps of {args.batch_size}, {trainable:,} trainable "
              f"parameters of {M.count_parameters(policy):,}, {args.precision}, {world} "
              f"process(es) on {device}" + (f", resumed at step {step}" if step else ""))

    # ---- the loop: a global batch per step, accumulated over micro-batches ----
    groups = [r["image_path"] for r in records] if args.group_by_image and not args.judge else None
    end = sampler.end_of_turn(processor)  # the model's own end of turn closes every target: the model learns to stop
    bar = tqdm(total=total_steps, initial=step, desc=stage, disable=rank != 0, dynamic_ncols=True)
    while step < total_steps:
        batch = data.epoch_batches(len(records), args.batch_size, args.seed, step // steps_per_epoch,
                                   groups)[step % steps_per_epoch]
        mine = [records[i] for i in batch[rank::world]]  # each rank its share of the same global batch
        chunks = [mine[i:i + args.micro_batch] for i in range(0, len(mine), args.micro_batch)]
        t0, loss_sum = time.time(), 0.0
        run.reset_peak_memory()  # peak_mem_gb: this step's
        if args.judge:  # one target letter per example
            n_tokens = D.all_reduce_sum(float(len(mine)))
            micro = [partial(judge_loss, judge, c, n_tokens) for c in chunks]
        else:
            inputs = [(data.prompt_batch(processor, c), *data.target_batch(processor.tokenizer, c, end)) for c in chunks]
            n_tokens = D.all_reduce_sum(float(sum(mask.sum() for _, _, mask in inputs)))
            micro = [partial(sft_loss, policy, {k: v.to(device) for k, v in prompt.items()}, ids.to(device),
                             mask.to(device), n_tokens, [r["image_path"] for r in c] if groups else None)
                     for c, (prompt, ids, mask) in zip(chunks, inputs)]
        for micro_loss in micro:
            with precision.autocast(device, args.precision):  # forward passes only, never around optimizer.step()
                loss = micro_loss()
            loss.backward()
            loss_sum += loss.item()
        D.sync_grads(params)  # each rank's loss is divided by the global token count: sum them
        grad_norm = D.clip_grad_norm(params, args.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler steps after it)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_sum = D.all_reduce_sum(loss_sum)
        seconds = time.time() - t0
        row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_sum, "lr": lr,
               "grad_norm": grad_norm, ("letters_per_s" if args.judge else "tokens_per_s"): n_tokens / seconds,
               "seconds": seconds, "peak_mem_gb": run.peak_memory_gb()}
        if args.eval_every and eval_records and (step % args.eval_every == 0 or step == total_steps):
            with precision.autocast(device, args.precision), D.unsharded(policy):  # every rank joins FSDP's all-gathers
                if rank == 0 or args.fsdp:
                    row.update(evaluate_judge(judge, eval_records, args.micro_batch) if args.judge else
                               evaluate_sft(policy, processor, eval_records, args.micro_batch, args.max_new_tokens))
        if rank == 0:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            report.log(row)
            bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{row['lr']:.2e}")
            bar.update(1)
        if run.checkpoint_and_stop(args.out, step, policy, optimizer, scheduler, save_every=args.save_every,
                                 stop_after=args.stop_after):
            break
    bar.close()
    if rank == 0:
        report.close()

    # ---- output: the adapter (+ merged model) or the full model, the processor ----
    if step == total_steps:
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        run.save_model(args.out, policy, processor, dtype)  # the adapter, or the full model with --full
        if args.merge and not args.full:
            os.makedirs(os.path.join(args.out, "merged"), exist_ok=True)
            run.save_model(os.path.join(args.out, "merged"), M.merge_lora(policy), processor, dtype)
        run.mark_done(args.out)
        if rank == 0:
            print(f"wrote {args.out}")
    D.finish()
    return policy


if __name__ == "__main__":
    main()
