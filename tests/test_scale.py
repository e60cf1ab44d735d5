"""The GPU path's logic on a CPU: the bf16 precision regime, collectives, FSDP2, full batches on every rank, and
resume under torchrun (gloo stands in for NCCL, autocast on CPU for autocast on GPUs)."""
import importlib.util
import itertools
import os
import shutil

import pytest
import torch
import torch.distributed as dist
from helpers import count_tower_images, free_port, grpo_args, metrics, torchrun
from safetensors.torch import load_file

import data
import distributed as D
import model as M
import precision
import run
import sampler
import train_grpo

# ---- precision: π_θ and π_SFT in one regime, autocast around forward passes only ----

def test_the_lm_head_gives_fp32_logits_under_autocast(tiny, records):
    m, processor = tiny
    prompt = data.prompt_batch(processor, records[:2])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = m(**prompt, logits_to_keep=1).logits
        precision.fp32_logits(m)
        fp32 = m(**prompt, logits_to_keep=1, output_hidden_states=True)
    assert bf16.dtype == torch.bfloat16 and fp32.logits.dtype == torch.float32
    exact = fp32.hidden_states[-1][:, -1:].float() @ m.lm_head.weight.float().T
    torch.testing.assert_close(fp32.logits, exact, atol=1e-5, rtol=1e-5)
    assert (bf16.float() - exact).abs().max() > 1e-3  # what the bf16 head loses


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_before_the_first_update_the_ratio_is_one_and_the_kl_zero_under_bf16(sft5, five, tmp_path, mode):
    train_grpo.main(grpo_args(sft5, five, tmp_path, "--precision", "bf16", "--stop-after", "1",
                              *(["--lora"] if mode == "lora" else [])))
    first = metrics(tmp_path)[0]
    assert first["kl"] == 0.0 and first["clip_frac"] == 0.0  # the same computation: exactly 0, not merely < 1e-6
    assert first["zero_adv_groups"] < 1  # rewards differ within a group: the step has a gradient


def test_a_bf16_copy_of_pi_sft_would_not_be_the_policy_under_autocast(sft5, records):
    """Why π_SFT runs in the policy's regime (fp32 weights under autocast), not as a cheaper bf16 copy."""
    fp32, processor = M.load_model(sft5, device="cpu", dtype=torch.float32)
    bf16, _ = M.load_model(sft5, device="cpu", dtype=torch.bfloat16)
    prompt = data.prompt_batch(processor, records[:2])
    ids, mask = data.target_batch(processor.tokenizer, records[:2], sampler.end_of_turn(processor))
    with torch.no_grad(), precision.autocast("cpu", "bf16"):
        a, b = (M.group_logprobs(net, prompt, ids, mask, 1) for net in (fp32, bf16))
    assert (a - b)[mask.bool()].abs().max() > 1e-3  # measured 3e-3 here; 3.7 nats of KL on a random 2.27B model


def test_the_second_iteration_sees_the_updated_weights_under_bf16(tiny_dir, records):
    """μ = 2: the second pass must score the samples with the weights the first optimizer step made (a random
    model: its four samples differ, so the advantages give a gradient)."""
    policy, processor = M.load_model(tiny_dir, device="cpu", dtype=torch.float32)
    policy.requires_grad_(True)
    prompt = data.prompt_batch(processor, records[:1])
    rollout = sampler.sample(policy, processor, prompt, group_size=4, max_new_tokens=24, seed=0)
    ids, mask = rollout["completion_ids"], rollout["completion_mask"]
    args = train_grpo.parse_args(["--data", "-", "--group-size", "4", "--micro-batch", "4", "--iterations", "2",
                                  "--ratio-ref", "old", "--precision", "bf16", "--lr", "1e-2"])
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr)
    seen = []
    original = train_grpo.grpo_loss
    train_grpo.grpo_loss = lambda logps, *a, **k: seen.append(logps.detach()) or original(logps, *a, **k)
    try:
        train_grpo.policy_step(policy, policy, optimizer, run.lr_schedule(optimizer, 4, 0.0, "constant"), params,
                               prompt, ids, mask, torch.tensor([1.0, -1.0, 0.5, -0.5]), args)
        with precision.autocast("cpu", "bf16"):
            after = M.group_logprobs(policy, prompt, ids, mask, 4).detach()  # π_θ after both steps
    finally:
        train_grpo.grpo_loss = original
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])
    # and the second pass is what a fresh forward after one step gives: rerun the first step alone
    fresh, _ = M.load_model(tiny_dir, device="cpu", dtype=torch.float32)
    fresh.requires_grad_(True)
    params = [p for p in fresh.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr)
    args.iterations = 1
    train_grpo.policy_step(fresh, fresh, optimizer, run.lr_schedule(optimizer, 4, 0.0, "constant"), params, prompt, ids,
                           mask, torch.tensor([1.0, -1.0, 0.5, -0.5]), args)
    with precision.autocast("cpu", "bf16"):
        one_step = M.group_logprobs(fresh, prompt, ids, mask, 4).detach()
    torch.testing.assert_close(seen[1], one_step)
    assert not torch.equal(after, seen[1])


# ---- collectives ----

@pytest.fixture()
def group_of_one():
    """A real process group of one process (gloo), as `torchrun --nproc_per_node 1` makes."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class Reduced(Exception):
    pass


def test_collectives_run_in_a_group_of_one_process(group_of_one, monkeypatch):
    calls = []
    real = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: calls.append(t.device) or real(t, *a, **k))
    assert D.all_reduce_sum({"a": 1.5, "b": 2.0}) == {"a": 1.5, "b": 2.0} and D.all_reduce_sum(3.0) == 3.0
    net = torch.nn.Linear(2, 2)
    net(torch.ones(1, 2)).sum().backward()
    D.sync_grads(list(net.parameters()))
    assert len(calls) == 3  # two sums, one bucket of both gradients: NCCL runs even on one GPU, as on eight


def test_gradients_are_summed_in_flat_buckets(group_of_one, monkeypatch, tiny):
    m, _ = tiny
    m.requires_grad_(True)
    params = [p for p in m.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float(i))
    calls = []
    real = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: calls.append(t.numel()) or real(t, *a, **k))
    D.sync_grads(params)  # ~40 tensors, one bucket: one collective, not one a parameter
    assert calls == [sum(p.numel() for p in params)] and len(params) > 30
    D.sync_grads(params, bucket_mb=0.25)  # 0.25 MB buckets: a few collectives, each within its bound or one tensor
    assert 1 < len(calls) - 1 < len(params) and sum(calls[1:]) == calls[0]
    assert all(torch.equal(p.grad, torch.full_like(p, float(i))) for i, p in enumerate(params))  # a sum over 1 rank


def test_the_process_group_waits_as_long_as_dist_timeout(monkeypatch):
    import datetime
    seen = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **k: seen.update(backend=backend, **k))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 1)
    assert D.init_distributed(timeout_minutes=90) == (0, 1, "cpu")
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(minutes=90)}
    assert train_grpo.parse_args(["--data", "-"]).dist_timeout == 60  # generous: a 37 GB checkpoint on a slow disk


def test_collectives_take_tensors_on_the_groups_device(group_of_one, monkeypatch):
    """NCCL reduces CUDA tensors only. A CPU build has no CUDA tensor, so the group's device is faked as `meta` and
    a fake all_reduce checks where each tensor lives."""
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert D.group_device() == torch.device("cuda", 3)
    monkeypatch.setattr(D, "group_device", lambda: torch.device("meta"))
    seen = []

    def fake_all_reduce(t, *a, **k):
        seen.append(t.device)
        raise Reduced

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    with pytest.raises(Reduced):
        D.all_reduce_sum({"loss": 1.0})
    with pytest.raises(Reduced):
        D.sync_grads([torch.nn.Parameter(torch.zeros(2, device="meta"))])  # a parameter on the GPU: its grad there
    assert seen == [torch.device("meta")] * 2


def test_every_rank_starts_from_rank_0s_weights(tmp_path):
    torchrun("tests/dist_worker.py", tmp_path / "w")
    a, b = load_file(tmp_path / "w-0.safetensors"), load_file(tmp_path / "w-1.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights, and the same summed gradient
    torch.manual_seed(1)
    assert not torch.equal(torch.nn.Linear(4, 8).weight, a["0.weight"])  # rank 1's own seed was overridden
    assert a["summed"].tolist() == [2.0, 1.0]


# ---- full batches on every rank, FSDP2 ----

def test_epoch_batches_are_full_and_wrap_the_tail():
    batches = data.epoch_batches(5, 2, seed=0, epoch=0)
    assert len(batches) == 3 and all(len(b) == 2 for b in batches)
    assert sorted(sum(batches, [])[:5]) == list(range(5))  # every item once, then the first ones again
    assert sum(batches, [])[5:] == sum(batches, [])[:1]
    assert data.epoch_batches(5, 2, 0, 1) != batches and data.epoch_batches(5, 2, 0, 0) == batches
    assert data.epoch_batches(1, 4, 0, 0) == [[0, 0, 0, 0]]
    # each (seed, epoch) pair its own order: seed 0's epoch 1000 is not seed 1's epoch 0
    assert data.epoch_batches(50, 50, 0, 1000) != data.epoch_batches(50, 50, 1, 0)


def test_epoch_batches_by_group_keep_each_groups_items_together():
    groups = ["a", "b", "a", "c", "b", "a", "d"]  # items 0, 2, 5 share key "a"; 1, 4 key "b"
    order = sum(data.epoch_batches(7, 7, seed=0, epoch=0, groups=groups), [])
    assert sorted(order) == list(range(7))
    runs = [key for key, _ in itertools.groupby(groups[i] for i in order)]
    assert sorted(runs) == sorted(set(groups))  # each group's items in one run
    assert [i for i in order if groups[i] == "a"] == [0, 2, 5]  # in file order within the group
    # the groups' order changes with the epoch, as the items' does without groups
    firsts = {tuple(dict.fromkeys(groups[i] for i in sum(data.epoch_batches(7, 7, 0, e, groups), []))) for e in range(6)}
    assert len(firsts) > 1
    assert data.epoch_batches(7, 3, 0, 0) == data.epoch_batches(7, 3, 0, 0, None)  # no groups: as before


@pytest.fixture(scope="module")
def two_rank_runs(sft5, five, tmp_path_factory):
    """One epoch over five prompts on two ranks, replicated and with FSDP: 3 steps, the last wrapped."""
    out = tmp_path_factory.mktemp("two_ranks")
    report = ["--report-to", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    for name, extra in (("replicated", report), ("fsdp", ["--fsdp", "--save-every", "1"])):
        torchrun("train_grpo.py", *grpo_args(sft5, five, out / name, *extra))
    return out


def test_no_rank_is_left_without_prompts_at_the_end_of_an_epoch(two_rank_runs):
    rows = metrics(two_rank_runs / "replicated")
    assert [r["step"] for r in rows] == [1, 2, 3] and os.path.isfile(two_rank_runs / "replicated" / "model.safetensors")
    if importlib.util.find_spec("tensorboard"):  # only rank 0 reports: one event file
        assert len(os.listdir(two_rank_runs / "replicated" / "tensorboard")) == 1


def test_fsdp_ends_with_the_replicated_runs_weights(two_rank_runs, sft5):
    a = load_file(two_rank_runs / "fsdp" / "model.safetensors")
    b = load_file(two_rank_runs / "replicated" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    start, _ = M.load_model(sft5, device="cpu")
    loaded, _ = M.load_model(str(two_rank_runs / "fsdp"), device="cpu")  # a plain save_pretrained folder
    moved = [n for n, p in loaded.named_parameters() if not torch.equal(p, start.get_parameter(n))]
    assert moved  # the three steps trained
    assert [r["kl"] for r in metrics(two_rank_runs / "fsdp")] == pytest.approx(
        [r["kl"] for r in metrics(two_rank_runs / "replicated")], abs=1e-7)


def test_an_fsdp_run_resumes_from_its_sharded_checkpoint(two_rank_runs, sft5, five, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(two_rank_runs / "fsdp" / "checkpoint-1", out / "checkpoint-1")
    assert sorted(os.listdir(out / "checkpoint-1")) == ["optimizer.pt", "rng-0.pt", "rng-1.pt", "state.pt",
                                                        "trainable.safetensors"]
    torchrun("train_grpo.py", *grpo_args(sft5, five, out, "--fsdp", "--resume"))
    a, b = load_file(out / "model.safetensors"), load_file(two_rank_runs / "fsdp" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert [r["step"] for r in metrics(out)] == [2, 3]


def test_sft_with_fsdp_equals_replicated(tiny_dir, synth_dir, tmp_path):
    args = ["--model", tiny_dir, "--data", os.path.join(synth_dir, "train.jsonl"), "--full", "--epochs", "1",
            "--batch-size", "16", "--micro-batch", "4", "--lr", "1e-3", "--stop-after", "2"]
    torchrun("train_sft.py", *args, "--out", tmp_path / "replicated")
    torchrun("train_sft.py", *args, "--out", tmp_path / "fsdp", "--fsdp")
    a = load_file(tmp_path / "replicated" / "checkpoint-2" / "trainable.safetensors")
    b = load_file(tmp_path / "fsdp" / "checkpoint-2" / "trainable.safetensors")
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    losses = [[r["loss"] for r in metrics(tmp_path / d)] for d in ("replicated", "fsdp")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# ---- resume under torchrun ----

def test_resume_under_torchrun_restores_each_ranks_random_state(tiny_dir, synth_dir, tmp_path):
    """Each rank draws its own LoRA dropout masks; a resumed run must go on with each rank's own stream."""
    args = ["--model", tiny_dir, "--data", os.path.join(synth_dir, "train.jsonl"), "--epochs", "1", "--batch-size", "8",
            "--micro-batch", "4", "--lr", "1e-3", "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0.3"]
    torchrun("train_sft.py", *args, "--out", tmp_path / "straight", "--stop-after", "4")
    torchrun("train_sft.py", *args, "--out", tmp_path / "resumed", "--stop-after", "2")
    torchrun("train_sft.py", *args, "--out", tmp_path / "resumed", "--stop-after", "4", "--resume")
    a = load_file(tmp_path / "straight" / "checkpoint-4" / "trainable.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoint-4" / "trainable.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in metrics(tmp_path / "resumed")] == [1, 2, 3, 4]
    rng = [torch.load(tmp_path / "straight" / "checkpoint-4" / f"rng-{r}.pt", weights_only=True)["cpu"] for r in (0, 1)]
    assert not torch.equal(*rng)  # the ranks' streams differ: restoring rank 0's on rank 1 would be wrong


def test_resume_without_a_checkpoint_says_so_and_a_new_run_keeps_off_an_old_one(sft5, five, tmp_path):
    with pytest.raises(SystemExit, match="holds no complete checkpoint"):
        train_grpo.main(grpo_args(sft5, five, tmp_path, "--resume"))
    assert not os.path.exists(tmp_path / "metrics.jsonl")
    train_grpo.main(grpo_args(sft5, five, tmp_path, "--stop-after", "1"))
    with pytest.raises(SystemExit, match="checkpoint-1 of an earlier run: pass --resume"):
        train_grpo.main(grpo_args(sft5, five, tmp_path))


# ---- the GPU path, exact and lean (its logic on the CPU) ----

@pytest.fixture(scope="module", params=["qwen2.5-vl", "qwen3-vl", "gemma3"])
def wide(synth_dir, tmp_path_factory, request):
    """A tiny model of each family four times as wide (hidden 256), where last-bit differences show in log-probs."""
    from tiny import build_tiny, corpus_lines
    out = str(tmp_path_factory.mktemp("wide"))
    return build_tiny(out, family=request.param, seed=1, vocab_size=512, hidden=256, heads=4, layers=2,
                      corpus=list(corpus_lines([os.path.join(synth_dir, "train.jsonl")])))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_before_the_first_update_log_pi_theta_equals_log_pi_sft_to_the_bit(wide, five, tmp_path, monkeypatch, precision,
                                                                           mode, checkpointing):
    """Not the KL (k3 rounds to 0 in fp32 for |d| < 3e-4): every completion token's log-probs, torch.equal."""
    seen = []
    real = train_grpo.grpo_loss
    monkeypatch.setattr(train_grpo, "grpo_loss", lambda logps, ref, *a, **k: seen.append((logps.detach(), ref, a[1]))
                        or real(logps, ref, *a, **k))
    flags = ["--precision", precision, "--stop-after", "1", "--max-new-tokens", "32",
             *(["--lora"] if mode == "lora" else []), *(["--gradient-checkpointing"] if checkpointing else [])]
    train_grpo.main(grpo_args(wide, five, tmp_path, *flags))
    assert seen
    for logps, ref, mask in seen:
        keep = mask.bool()
        assert keep.any() and torch.equal(logps[keep], ref[keep])


def test_the_frozen_vision_tower_runs_once_a_step(family_dir, five, tmp_path, monkeypatch):
    images = []
    real = M.load_model

    def counting(*a, **k):
        net, processor = real(*a, **k)
        count_tower_images(net, images)
        return net, processor

    monkeypatch.setattr(M, "load_model", counting)
    train_grpo.main(grpo_args(family_dir, five, tmp_path / "frozen", "--stop-after", "1"))  # 2 prompts x G=4
    assert sum(images) == 2  # each prompt's image once: sampling, π_SFT and π_θ share its embeddings
    images.clear()
    train_grpo.main(grpo_args(family_dir, five, tmp_path / "trained", "--stop-after", "1", "--train-vision"))
    assert sum(images) == 6  # a trained tower: sampling, π_SFT and π_θ each run it


def test_the_kv_cache_keeps_keys_in_the_dtype_attention_reads(tiny, records, monkeypatch):
    m, processor = tiny
    caches = []
    real = sampler.KVCache
    monkeypatch.setattr(sampler, "KVCache", lambda *a, **k: caches.append(real(*a, **k)) or caches[-1])
    prompt = data.prompt_batch(processor, records[:2])
    with precision.autocast("cpu", "bf16"):
        sampler.sample(m, processor, prompt, group_size=2, max_new_tokens=4, seed=0)
    keys, values = caches[0].keys[0], caches[0].values[0]
    assert keys.dtype == values.dtype == torch.bfloat16  # fp32 keys beside bf16 values would be 1.5x the cache


def test_decoding_attends_over_the_filled_prefix_in_buckets(tiny, records, monkeypatch):
    m, processor = tiny
    prompt = data.prompt_batch(processor, records[:2])
    P = prompt["input_ids"].shape[1]
    full = sampler.sample(m, processor, prompt, group_size=2, max_new_tokens=40, seed=0)
    lengths = []
    real = sampler.KVCache.update
    monkeypatch.setattr(sampler.KVCache, "update",
                        lambda self, *a, **k: (lambda kv: lengths.append((int(self.pos), kv[0].shape[2])) or kv)(real(self, *a, **k)))
    monkeypatch.setattr(sampler, "BUCKET", 16)
    bucketed = sampler.sample(m, processor, prompt, group_size=2, max_new_tokens=40, seed=0)
    decode = [(pos, n) for pos, n in lengths if pos >= P]
    assert decode and all(n == min(P + 40, -(-(pos + 1) // 16) * 16) for pos, n in decode)
    assert decode[0][1] < P + 40  # not the whole static length from the first step
    assert torch.equal(full["completion_ids"], bucketed["completion_ids"])
    torch.testing.assert_close(full["logprobs"], bucketed["logprobs"], atol=1e-6, rtol=0)


def test_the_head_takes_bf16_inputs_to_fp32_logits_on_a_gpu():
    """torch.mm's bf16 -> fp32 product runs on CUDA only; on `meta` tensors (a stand-in for the GPU on this CPU) the
    head's product takes bf16 inputs to an fp32 result of the right shape, with a gradient; the CPU keeps fp32."""
    weight = torch.empty(300, 64, device="meta", requires_grad=True)
    hidden = torch.empty(10, 64, device="meta", requires_grad=True)
    logits = precision.head_product(hidden, weight, bf16_inputs=True)
    assert logits.dtype == torch.float32 and logits.shape == (10, 300)
    logits.sum().backward()
    assert hidden.grad.shape == hidden.shape and weight.grad.shape == weight.shape
    assert precision.MM_TO_FP32 == ("cuda",)
    with pytest.raises(NotImplementedError):  # why the CPU computes the head in fp32
        precision.head_product(torch.zeros(2, 4), torch.zeros(3, 4), bf16_inputs=True)


# ---- the LM head's bf16 copy, the decode graphs' memory, each step's peak ----

@pytest.fixture()
def bf16_head_on_cpu(monkeypatch):
    """The GPU's bf16 head (bf16 inputs, fp32 accumulation) emulated on the CPU, its weight casts counted."""
    monkeypatch.setattr(precision, "MM_TO_FP32", ("cuda", "cpu"))
    monkeypatch.setattr(precision, "_mm_fp32", lambda a, b: torch.mm(a.float(), b.float()))
    casts, real = [], precision._cast_bf16
    monkeypatch.setattr(precision, "_cast_bf16", lambda weight: casts.append(weight._version) or real(weight))
    return casts


def test_the_lm_head_is_cast_to_bf16_once_a_sampled_batch(bf16_head_on_cpu, tiny, records):
    casts = bf16_head_on_cpu
    policy, processor = tiny
    precision.fp32_logits(policy)
    prompt = data.prompt_batch(processor, records[:2])
    with precision.autocast("cpu", "bf16"):
        out = sampler.sample(policy, processor, prompt, group_size=4, max_new_tokens=12, min_new_tokens=12, seed=0)
        assert out["completion_ids"].shape[1] == 12 and casts == [0]  # a prefill and 11 decode forwards: one copy
        policy(**prompt, logits_to_keep=1)
        policy(**prompt, logits_to_keep=1)
    assert len(casts) == 3  # outside a sample() call, each forward casts


@pytest.mark.parametrize("mode, iterations, expected", [("lora", 2, 1), ("full", 1, 2), ("full", 2, 3)])
def test_the_lm_head_is_cast_to_bf16_once_a_loss_step(bf16_head_on_cpu, sft5, records, mode, iterations, expected):
    """A loss step casts the head once: a LoRA's π_θ and π_SFT (adapter off) share one frozen head, whatever μ; a full
    fine-tune casts π_SFT's once and π_θ's again after each update (its tied head is trained: the copy follows the
    weight's version)."""
    casts = bf16_head_on_cpu
    sft, processor = M.load_model(sft5, device="cpu")
    policy, reference = (M.add_lora(sft, 4, 8, 0.0), None) if mode == "lora" else (sft.requires_grad_(True), M.load_model(sft5, device="cpu")[0])
    for net in (policy, reference):
        if net is not None:
            precision.fp32_logits(net)
    prompt = data.prompt_batch(processor, records[:2])
    rollout = sampler.sample(policy, processor, prompt, group_size=2, max_new_tokens=8, seed=0)  # fp32: no cast
    assert casts == []
    args = train_grpo.parse_args(["--data", "-", "--group-size", "2", "--micro-batch", "2", "--precision", "bf16",
                                  "--iterations", str(iterations)])
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3)
    train_grpo.policy_step(policy, reference, optimizer, run.lr_schedule(optimizer, 4, 0.0, "constant"), params, prompt,
                           rollout["completion_ids"], rollout["completion_mask"], torch.tensor([1.0, -1.0, 0.5, -0.5]),
                           args)  # two micro-batches a pass, μ passes
    assert len(casts) == expected


def test_decode_graphs_share_one_pool_and_free_each_bucket_as_decoding_moves_on():
    import gc
    import weakref

    class Graph:
        replays = 0

        def replay(self):
            self.replays += 1

    made, pools = [], []

    def capture(step, pool):
        made.append(Graph())
        pools.append(pool)
        return made[-1], f"logits of graph {len(made)}"

    graphs = sampler.DecodeGraphs(step=None, capture=capture, new_pool=object)
    outs = [graphs(live) for live in (128, 128, 256, 256, 256, 384)]
    assert outs == ["logits of graph 1"] * 2 + ["logits of graph 2"] * 3 + ["logits of graph 3"]
    assert graphs.captures == 3 and len({id(p) for p in pools}) == 1  # one pool for every bucket
    alive = [weakref.ref(g) for g in made]
    replays = [g.replays for g in made]
    del made[:]
    gc.collect()
    assert [r() is not None for r in alive] == [False, False, True] and replays == [2, 3, 1]  # only the current bucket
    failed = sampler.DecodeGraphs(step=None, capture=lambda step, pool: (None, None), new_pool=object)
    assert failed(128) is None  # a model that cannot be captured: the caller decodes eagerly


def test_sampling_through_decode_graphs_decodes_what_the_eager_loop_does(vlm, records, monkeypatch):
    """sample() with its CUDA-graph path on, each graph faked by a replay that reruns the step into the captured
    output: the same tokens and log-probs as the eager loop, one capture a bucket of live length (each family: the
    step reads its positions and mask from buffers the loop writes in place)."""
    policy, processor = vlm
    prompt = data.prompt_batch(processor, records[:2])

    class Replay:
        def __init__(self, step):
            self.step, self.out = step, step()

        def replay(self):
            self.out.copy_(self.step())

    def capture(step, pool):
        graph = Replay(step)
        return graph, graph.out

    monkeypatch.setattr(sampler, "_capture", capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", object)
    monkeypatch.setattr(sampler, "BUCKET", 16)
    eager = sampler.sample(policy, processor, prompt, group_size=3, max_new_tokens=40, min_new_tokens=40, seed=0)
    graphed = sampler.sample(policy, processor, prompt, group_size=3, max_new_tokens=40, min_new_tokens=40, seed=0,
                             cuda_graph=True)
    P = prompt["input_ids"].shape[1]
    buckets = len({-(-(P + t + 1) // 16) for t in range(39)})
    assert eager["graph_captures"] == 0 and graphed["graph_captures"] == buckets > 2
    assert torch.equal(eager["completion_ids"], graphed["completion_ids"])
    torch.testing.assert_close(eager["logprobs"], graphed["logprobs"], atol=0, rtol=0)


def test_peak_memory_is_each_steps_own():
    run.reset_peak_memory()
    x = torch.ones(64 * 2**20)  # 256 MiB, touched
    high = run.peak_memory_gb()
    del x
    run.reset_peak_memory()
    assert run.peak_memory_gb() < high - 0.2  # the step after a large one does not report its peak
