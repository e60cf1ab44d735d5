"""A training run's bookkeeping: atomic checkpoints and resume, the final model and DONE, logs, the lr schedule.

Also the loop's instruments: the profiler and peak memory.

Imports distributed.py (every rank calls the writers: under FSDP the shards are gathered to rank 0).

A checkpoint and the final model are written to a temporary folder first and moved into place when complete, so a
run killed at any moment leaves the previous checkpoint the newest complete one, and `--resume` continues from it
to the same result as an uninterrupted run.
"""
import json
import math
import os
import re
import shutil
import time
import types

import torch
import torch.distributed as dist

import distributed as D


# ---- weights, the final model and DONE ----

def save_processor(processor, out: str):
    """Write the processor as the hub model ships it (tokenizer + image processor files, processor_config.json naming
    its class), loadable without torchvision and by AutoProcessor alike, with the processor's chat template (the one
    every stage builds prompts with; a hub tokenizer may carry another)."""
    tokenizer, own = processor.tokenizer, processor.tokenizer.chat_template
    tokenizer.chat_template = processor.chat_template or own
    try:
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.chat_template = own  # the tokenizer in use keeps its own (the judge builds prompts with it)
    processor.image_processor.save_pretrained(out)
    own = {k: v for k, v in processor.to_dict().items() if not isinstance(v, dict)}  # its class, Gemma's image_seq_length
    json.dump(own, open(os.path.join(out, "processor_config.json"), "w"), indent=2)


def full_state(model, trained_only: bool = False) -> dict:
    """The model's weights as CPU tensors by parameter name (tied weights once), gathered from the shards under FSDP:
    every rank must call it, and under FSDP only rank 0 gets them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    names = {n for n, p in model.named_parameters() if p.requires_grad or not trained_only}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                ignore_frozen_params=trained_only))
    return {n: t.detach().cpu().contiguous() for n, t in full.items() if n in names}


def trainable_state(model) -> dict:
    return full_state(model, trained_only=True)


def save_model(out: str, model, processor, dtype: torch.dtype):
    """The run's final output in OUT: a plain Hugging Face folder (save_pretrained, weights in `dtype`; a PEFT model
    writes its adapter) with the processor, loadable by from_pretrained and load_model. Every rank calls it: under
    FSDP the shards are gathered to rank 0, which writes. A crash never leaves half of it: the files are written to
    a temporary folder, then moved into OUT one by one (each move atomic; the config last, so a half-moved folder does
    not load). mark_done then says the run finished."""
    adapter = hasattr(model, "peft_config")
    state = None if adapter else {n: t.to(dtype) for n, t in full_state(model).items()}
    if D.get_rank() != 0:
        return
    tmp = os.path.join(out, ".final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, **({} if adapter else {"state_dict": state}))
        save_processor(processor, tmp)
        for name in sorted(os.listdir(tmp), key=lambda name: name in ("config.json", "adapter_config.json")):
            os.replace(os.path.join(tmp, name), os.path.join(out, name))
        os.rmdir(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing the final model to {out}: {e}. Its newest complete checkpoint is "
                      f"{latest_checkpoint(out)}: make room and run again with --resume") from e


def mark_done(out: str):
    """OUT/DONE, written last (by rank 0): the run finished and its outputs are complete (ablations.sh skips such
    runs). start_step removes it when a run starts again in OUT."""
    if D.get_rank() == 0:
        with open(os.path.join(out, "DONE.tmp"), "w") as f:
            f.write("finished: the outputs in this folder are complete\n")
        os.replace(os.path.join(out, "DONE.tmp"), os.path.join(out, "DONE"))


# ---- checkpoints and resume ----

def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's GPU
    return state


def save_checkpoint(out: str, step: int, model, optimizer, scheduler, **extra) -> str:
    """OUT/checkpoint-STEP: the trained weights (trainable.safetensors), the optimizer (optimizer.pt), the step and
    scheduler (state.pt), and each rank's RNG states (rng-RANK.pt). Every rank calls it. Under FSDP the shards are
    gathered to rank 0 on CPU, so that a checkpoint is the same files however the run was sharded and resumes with
    or without FSDP, on any number of GPUs (the cost: rank 0's CPU memory holds the trained weights and AdamW state,
    12 bytes a parameter). Written to a temporary folder renamed when complete: a crash never leaves half a
    checkpoint. Across nodes, OUT must be a folder every rank sees (a shared file system)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    rank, final, start = D.get_rank(), os.path.join(out, f"checkpoint-{step}"), time.time()
    tmp = final + ".tmp"
    weights = trainable_state(model)
    optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    D.barrier()
    error = None
    try:
        torch.save(_rng_state(), os.path.join(tmp, f"rng-{rank}.pt"))
        if rank == 0:
            save_file(weights, os.path.join(tmp, "trainable.safetensors"))
            torch.save(optim, os.path.join(tmp, "optimizer.pt"))
            torch.save({"step": step, "scheduler": scheduler.state_dict(), "extra": extra}, os.path.join(tmp, "state.pt"))
    except OSError as e:  # a full disk, say
        error = e
    if D.all_reduce_sum(float(error is not None)):  # every rank learns of it: none waits for the others forever
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing {final}: {error or 'failed on another rank'}. The newest complete checkpoint is still "
                      f"{latest_checkpoint(out)}: make room and run again with --resume") from error
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        print(f"wrote {final} in {time.time() - start:.1f} s")  # what --dist-timeout must outlast on slow disks
    D.barrier()
    return final


def checkpoint_and_stop(out: str, step: int, model, optimizer, scheduler, *, save_every: int, stop_after: int) -> bool:
    """The end of a training step: a checkpoint every `save_every` steps and at `stop_after` (every rank calls it);
    True when the run stops here, as if interrupted (--stop-after, for testing --resume)."""
    stop = bool(stop_after) and step >= stop_after
    if (save_every and step % save_every == 0) or stop:
        save_checkpoint(out, step, model, optimizer, scheduler)
    return stop


def latest_checkpoint(out: str) -> str | None:
    """The newest complete checkpoint folder in `out` (temporary folders are incomplete and ignored)."""
    steps = [int(name.split("-")[1]) for name in os.listdir(out) if re.fullmatch(r"checkpoint-\d+", name)] \
        if os.path.isdir(out) else []
    return os.path.join(out, f"checkpoint-{max(steps)}") if steps else None


def load_checkpoint(path: str, model, optimizer, scheduler) -> dict:
    """Restore what save_checkpoint wrote; every rank calls it. Rank 0 reads the weights and optimizer state (to CPU)
    and broadcasts them, each rank keeping its shard under FSDP; each rank restores its own RNG states."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    rank, file = D.get_rank(), os.path.join(path, "trainable.safetensors")
    with safe_open(file, "pt") as f:
        missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(f.keys())
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); "
                         "was it written with other flags (--lora, --full, --train-vision)?")
    rng = os.path.join(path, f"rng-{rank}.pt")
    if not os.path.isfile(rng):
        raise ValueError(f"{path}: no rng-{rank}.pt: the checkpoint was written by a run of fewer ranks; resume it "
                         "with as many ranks as wrote it")
    options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=dist.is_initialized())
    load = lambda name: torch.load(os.path.join(path, name), map_location="cpu", weights_only=True)  # noqa: E731
    set_model_state_dict(model, load_file(file) if rank == 0 else {}, options=options)
    set_optimizer_state_dict(model, optimizer, load("optimizer.pt") if rank == 0 else {}, options=options)
    state = load("state.pt")
    scheduler.load_state_dict(state["scheduler"])
    rng = load(f"rng-{rank}.pt")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def start_step(out: str, resume: bool, model, optimizer, scheduler) -> int:
    """The step a run starts from: with --resume the newest complete checkpoint in `out`, restored (an error when
    there is none); else 0, refusing an `out` that holds an earlier run's checkpoints. OUT/DONE of an earlier
    finished run goes: this one is not finished yet."""
    path = latest_checkpoint(out)
    if resume and path is None:
        raise SystemExit(f"--resume: {out} holds no complete checkpoint (checkpoint-STEP/); run without --resume to "
                         "start from step 0")
    if not resume and path is not None:
        raise SystemExit(f"{out} holds {os.path.basename(path)} of an earlier run: pass --resume to continue it, or "
                         "give another --out")
    if D.get_rank() == 0 and os.path.exists(os.path.join(out, "DONE")):
        os.remove(os.path.join(out, "DONE"))  # a run under way is not finished: mark_done writes it again
    return load_checkpoint(path, model, optimizer, scheduler)["step"] if resume else 0


# ---- logs and the lr schedule ----

def open_log(path: str, step: int):
    """A JSONL log (one row a step) opened to append from `step` on. Rows of later steps, written by an interrupted
    run after the checkpoint it resumes from, are dropped, so a resumed run's log reads as an uninterrupted one's."""
    rows = open(path, encoding="utf-8").readlines() if os.path.exists(path) else []
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(row for row in rows if row.strip() and json.loads(row)["step"] <= step)
    os.replace(path + ".tmp", path)
    return open(path, "a", encoding="utf-8")


REPORT = "pip install -r requirements-report.txt"


def reporter(kind: str, out: str, config: dict):
    """Where each metrics row goes besides OUT/metrics.jsonl, which stays the source of truth: TensorBoard event files
    in OUT/tensorboard, a W&B run (its folder in OUT/wandb; WANDB_MODE=offline writes it without network,
    WANDB_PROJECT names the project, default medad-r1), or nowhere ('none'). The rows' names are metrics.jsonl's;
    sampled completions go in as a text table. Call it on rank 0 only. The backends are optional extras, imported
    only when asked for."""
    if kind == "none":
        return types.SimpleNamespace(log=lambda row: None, samples=lambda rows, step: None, close=lambda: None)
    if kind == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SystemExit(f"--report-to tensorboard needs the tensorboard package: {REPORT}") from None
        writer = SummaryWriter(os.path.join(out, "tensorboard"))

        def log(row):
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    writer.add_scalar(key, value, row["step"])
            writer.flush()

        def samples(rows, step):
            header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
            body = "".join("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in r.values()) + " |\n"
                           for r in rows)
            writer.add_text("samples", header + body, step)
        return types.SimpleNamespace(log=log, samples=samples, close=writer.close)
    if kind == "wandb":
        try:
            import wandb
        except ImportError:
            raise SystemExit(f"--report-to wandb needs the wandb package: {REPORT}") from None
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "medad-r1"), dir=out, config=config,
                         name=os.path.basename(os.path.abspath(out)))

        def samples(rows, step):
            run.log({"samples": wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])}, step=step)
        return types.SimpleNamespace(log=lambda row: run.log(dict(row), step=row["step"]), samples=samples,
                                     close=run.finish)
    raise ValueError(f"unknown --report-to {kind!r}: none, tensorboard or wandb")


def lr_schedule(optimizer, total_steps: int, warmup_ratio: float, decay: str = "cosine"):
    """Linear warm-up over warmup_ratio of the steps, then cosine decay to 0 or a constant rate."""
    warmup = max(1, round(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if decay == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)



# ---- the loop's instruments ----

def profiler(out: str | None):
    """torch.profiler over steps 2 and 3 of a loop that calls .step() after each step and .stop() at its end: the
    operators that took the most time go to OUT/profile.txt, a trace (chrome://tracing, ui.perfetto.dev) to
    OUT/trace.json. Without `out`, a stand-in that does nothing."""
    if out is None:
        return types.SimpleNamespace(step=lambda: None, stop=lambda: None)
    from torch.profiler import ProfilerActivity, profile, schedule
    cuda = torch.cuda.is_available()

    def write(prof):
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=30)
        with open(os.path.join(out, "profile.txt"), "w") as f:
            f.write(table)
        prof.export_chrome_trace(os.path.join(out, "trace.json"))

    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                   schedule=schedule(wait=1, warmup=0, active=2, repeat=1), on_trace_ready=write)
    prof.start()
    return prof


def reset_peak_memory():
    """Start a new peak: the GPU's allocation peak, or on Linux this process's peak resident memory (VmHWM, which
    writing 5 to /proc/self/clear_refs resets), so that each step's log says that step's peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux: peak_memory_gb is then the process's running maximum
        pass


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by torch since reset_peak_memory, or this process's peak resident memory on CPU
    (since reset_peak_memory on Linux; the running maximum elsewhere), in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 2**20  # KiB
    except (OSError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
