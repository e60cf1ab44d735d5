import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import ENV, ROOT, built_once, count_tower_images, grpo_args, metrics, torchrun
from safetensors.torch import load_file

import data
import model
import rewards
import run
import sampler
import train_grpo
import train_sft
from train_grpo import grpo_loss, group_advantages


def test_group_advantages_subtract_the_group_mean():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    torch.testing.assert_close(group_advantages(r, 4), torch.tensor([0.5, -0.5, 0.0, 0.0, 0, 0, 0, 0]))
    scaled = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 4, scale=True)
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std()  # unbiased
    torch.testing.assert_close(scaled, torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-4))


def test_at_theta_equal_sft_the_loss_is_minus_mean_advantage_with_zero_kl():
    logps = torch.log(torch.rand(3, 5)).requires_grad_()
    adv = torch.tensor([0.6, -0.2, 0.1])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    loss, stats = grpo_loss(logps, logps.detach(), adv, mask)
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert stats["kl"] == 0.0 and stats["clip_frac"] == 0.0
    loss.backward()  # d(−r Â)/dlogπ = −Â/T_i per token, averaged over 3 completions
    expected = -(adv.unsqueeze(1) / mask.sum(1, keepdim=True)) * mask / 3
    torch.testing.assert_close(logps.grad, expected.float())


@pytest.mark.parametrize("epsilon, log_ratio, adv, clipped", [
    (0.2, 0.5, 1.0, True),     # r = 1.65 > 1.2 with Â > 0: clipped, no gradient
    (0.2, 0.5, -1.0, False),   # r > 1+ε with Â < 0: min keeps the unclipped term
    (0.2, -0.5, -1.0, True),   # r = 0.61 < 0.8 with Â < 0: clipped
    (0.2, -0.5, 1.0, False),   # r < 1−ε with Â > 0: unclipped
    (0.2, 0.1, 1.0, False),    # inside the range
    (0.1, 0.15, 1.0, True),    # r = 1.16: beyond 1 + 0.1 ...
    (0.3, 0.25, 1.0, False),   # r = 1.28: ... but within 1 + 0.3
    (0.1, -0.15, -1.0, True),  # r = 0.86 < 1 − 0.1
    (0.3, -0.3, -1.0, False),  # r = 0.74 > 1 − 0.3
])
def test_clipping_on_each_side(epsilon, log_ratio, adv, clipped):
    ref = torch.tensor([[-1.0]])
    logps = (ref + log_ratio).requires_grad_()
    loss, stats = grpo_loss(logps, ref, torch.tensor([adv]), torch.ones(1, 1), epsilon=epsilon, beta=0.0)
    r = torch.exp(torch.tensor(log_ratio)).item()
    expected = -(min(r * adv, min(max(r, 1 - epsilon), 1 + epsilon) * adv))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert (logps.grad.abs().item() == 0) == clipped and stats["clip_frac"] == float(clipped)


def test_the_kl_term_estimates_the_exact_kl_to_pi_sft():
    """At tokens drawn from π_θ, the per-token KL of Eq. 8 (k3) averages to the exact KL(π_θ || π_SFT). On a
    categorical whose probabilities are multiples of 1/8, eight tokens in those proportions give the expectation
    exactly; the exact KL comes from torch.distributions, not from the implementation's formula."""
    p, q = torch.tensor([0.5, 0.25, 0.125, 0.125]), torch.tensor([0.1, 0.2, 0.3, 0.4])
    tokens = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])  # p's proportions
    logps, ref = p.log()[tokens].unsqueeze(0), q.log()[tokens].unsqueeze(0)
    exact = torch.distributions.kl_divergence(torch.distributions.Categorical(p), torch.distributions.Categorical(q))
    loss, stats = grpo_loss(logps, ref, torch.tensor([0.0]), torch.ones(1, 8), beta=0.04, agg="token")
    assert stats["kl"].item() == pytest.approx(exact.item(), rel=1e-5) and exact.item() > 0.3
    assert loss.item() == pytest.approx(0.04 * exact.item(), rel=1e-5)  # Â = 0: the loss is β·KL alone


def test_masked_tokens_change_nothing():
    logps, ref = torch.log(torch.rand(2, 6)), torch.log(torch.rand(2, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    adv = torch.tensor([0.3, -0.7])
    noisy = logps.clone()
    noisy[mask == 0] = -30.0  # garbage past the end of turn (log-probs are <= 0)
    for agg in ("seq", "token", "sum"):
        a = grpo_loss(logps, ref, adv, mask, agg=agg)[0]
        b = grpo_loss(noisy, ref, adv, mask, agg=agg)[0]
        assert a.item() == pytest.approx(b.item())


def test_a_masked_position_never_reaches_the_loss_or_its_gradient():
    """A pad position whose log-ratio overflows (inf, or a huge number) must not turn the loss or its gradient into
    NaN: masked positions are selected out, not multiplied by 0."""
    ref = torch.log(torch.rand(2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    adv = torch.tensor([0.5, -0.5])
    for agg in ("seq", "token", "sum"):
        grads = []
        for pad in (None, float("inf"), 1e4):
            logps = ref + 0.1
            if pad is not None:
                logps = logps.masked_fill(mask == 0, pad)
            logps.requires_grad_()
            loss, stats = grpo_loss(logps, ref, adv, mask, agg=agg)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(stats["kl"]) and torch.isfinite(logps.grad).all()
            grads.append((loss.item(), logps.grad))
        for loss, grad in grads[1:]:
            assert loss == pytest.approx(grads[0][0]) and torch.equal(grad, grads[0][1])


def test_the_three_aggregations():
    logps = torch.zeros(2, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    adv = torch.tensor([1.0, -1.0])  # per-token loss −Â: −1 on row 0 (1 token), +1 on row 1 (4 tokens)
    assert grpo_loss(logps, logps, adv, mask, agg="seq")[0].item() == pytest.approx(0.0)
    assert grpo_loss(logps, logps, adv, mask, agg="token")[0].item() == pytest.approx((-1 + 4) / 5)
    assert grpo_loss(logps, logps, adv, mask, agg="sum")[0].item() == pytest.approx((-1 + 4) / 2)


def test_old_logps_move_the_ratio_but_not_the_kl():
    ref = torch.tensor([[-1.0, -1.0]])
    logps = torch.tensor([[-0.5, -0.5]])
    adv = torch.tensor([1.0])
    against_sft, s1 = grpo_loss(logps, ref, adv, torch.ones(1, 2), beta=0.0)
    against_old, s2 = grpo_loss(logps, ref, adv, torch.ones(1, 2), beta=0.0, old_logps=logps)
    assert against_sft.item() == pytest.approx(-1.2)  # r = e^0.5 clipped at 1.2
    assert against_old.item() == pytest.approx(-1.0)  # r = 1 against the sampling policy
    assert s1["kl"] == s2["kl"]


@pytest.fixture(scope="module")
def sft_out(tiny_dir, synth_dir, tmp_path_factory):
    return built_once("sft", tmp_path_factory, lambda out: train_sft.main([
        "--model", tiny_dir, "--data", os.path.join(synth_dir, "train.jsonl"), "--out", out, "--epochs", "1",
        "--batch-size", "16", "--lr", "5e-3", "--lora-r", "8", "--lora-alpha", "16"]))


def test_one_step_raises_positive_and_lowers_negative_advantage(sft_out, records):
    _, processor = model.load_model(sft_out, device="cpu")
    prompt = data.prompt_batch(processor, records[:1])
    gains = []
    for adv in ([1.0, 0.0], [0.0, -1.0]):  # each direction alone: first order, it must move its completion
        policy, _ = model.load_model(sft_out, device="cpu")
        policy.requires_grad_(True)
        rollout = sampler.sample(policy, processor, prompt, group_size=2, max_new_tokens=16, seed=0)
        ids, mask = rollout["completion_ids"], rollout["completion_mask"]
        prompts = model.repeat_prompts(prompt, 2)
        before = model.completion_logprobs(policy, prompts, ids, mask).detach()
        loss, _ = grpo_loss(model.completion_logprobs(policy, prompts, ids, mask), before, torch.tensor(adv), mask,
                            beta=0.0)
        loss.backward()
        torch.optim.SGD(policy.parameters(), lr=1e-3).step()
        with torch.no_grad():
            after = model.completion_logprobs(policy, prompts, ids, mask)
        gains.append(((after - before) * mask).sum(1))
    assert gains[0][0] > 0 and gains[1][1] < 0


def test_lora_reference_equals_the_policy_before_training(sft_out, records):
    sft, processor = model.load_model(sft_out, device="cpu")
    prompt = data.prompt_batch(processor, records[:2])
    ids, mask = data.target_batch(processor.tokenizer, records[:2], sampler.end_of_turn(processor))
    with torch.no_grad():
        expected = model.completion_logprobs(sft, prompt, ids, mask)
    policy = model.add_lora(sft, r=4, alpha=8, dropout=0.0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # as if trained
    torch.testing.assert_close(train_grpo.reference_logprobs(policy, None, prompt, ids, mask, 1), expected,
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.equal(model.completion_logprobs(policy, prompt, ids, mask), expected)


def grpo(sft_out, data_path, out, *extra):
    return train_grpo.main(["--ckpt", sft_out, "--data", data_path, "--out", str(out), "--group-size", "4",
                            "--prompts-per-step", "2", "--max-new-tokens", "24", "--micro-batch", "4", "--lr", "1e-4",
                            *extra])


def test_end_to_end_writes_model_metrics_and_samples(sft_out, synth_dir, tmp_path):
    grpo(sft_out, os.path.join(synth_dir, "train.jsonl"), tmp_path, "--epochs", "0.02", "--log-samples-every", "1")  # 2 steps
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert len(rows) >= 2
    for key in ("reward", "accuracy", "format_rate", "consistency_rate", "kl", "clip_frac", "completion_len",
                "zero_adv_groups", "t_sample", "t_judge", "t_loss"):
        assert key in rows[0]
    samples = [json.loads(l) for l in open(tmp_path / "samples.jsonl")]
    assert len(samples) == 4 * len(rows) and {"completion", "reward", "judge"} <= samples[0].keys()
    loaded, _ = model.load_model(str(tmp_path), device="cpu")  # evaluate.py --ckpt OUT loads it the same way
    assert type(loaded).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_resume_equals_an_uninterrupted_run(sft5, five, tmp_path, monkeypatch):
    """Resumed at step 2 of 4, the run ends where the uninterrupted one does, weights and log. The weights move after
    the checkpoint (sft5's groups have unequal rewards, so advantages are not 0) and AdamW's state matters: resumed
    without it, the same run ends elsewhere."""
    flags = lambda out, *extra: grpo_args(sft5, five, out, "--lora", "--epochs", "2", *extra)  # noqa: E731
    train_grpo.main(flags(tmp_path / "straight", "--stop-after", "4"))
    train_grpo.main(flags(tmp_path / "resumed", "--stop-after", "2"))
    shutil.copytree(tmp_path / "resumed", tmp_path / "no_optimizer")
    loads, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real(*a, **k))
    train_grpo.main(flags(tmp_path / "resumed", "--stop-after", "4", "--resume"))
    # every rank reads to the CPU, then takes its part: nothing lands on cuda:0 for all ranks; nothing unpickled
    assert loads and all(k.get("map_location") == "cpu" and k.get("weights_only") is True for k in loads)
    weights = lambda out, step: load_file(tmp_path / out / f"checkpoint-{step}" / "trainable.safetensors")  # noqa: E731
    a, b, at_2 = weights("straight", 4), weights("resumed", 4), weights("resumed", 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], at_2[k]) for k in a)  # steps 3-4 moved the weights
    untimed = lambda out: [{k: v for k, v in r.items() if not k.startswith("t_") and k != "peak_mem_gb"}  # noqa: E731
                           for r in metrics(tmp_path / out)]
    assert untimed("resumed") == untimed("straight") and [r["step"] for r in metrics(tmp_path / "resumed")] == [1, 2, 3, 4]
    import torch.distributed.checkpoint.state_dict as state_dict
    monkeypatch.setattr(state_dict, "set_optimizer_state_dict", lambda *a, **k: None)  # AdamW's moments dropped
    train_grpo.main(flags(tmp_path / "no_optimizer", "--stop-after", "4", "--resume"))
    c = weights("no_optimizer", 4)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_the_ratio_against_pi_old_keeps_the_sampling_policy_over_every_iteration(tiny_dir, records, monkeypatch):
    """--ratio-ref old with --iterations 3: every pass takes the ratio against the log-probs of the policy that sampled
    (the first pass's), not against the policy of that pass, whose ratio would be 1 again after each update."""
    policy, processor = model.load_model(tiny_dir, device="cpu")
    policy.requires_grad_(True)
    prompt = data.prompt_batch(processor, records[:1])
    rollout = sampler.sample(policy, processor, prompt, group_size=4, max_new_tokens=16, seed=0)
    args = train_grpo.parse_args(["--data", "-", "--group-size", "4", "--micro-batch", "4", "--iterations", "3",
                                  "--ratio-ref", "old", "--lr", "1e-2", "--precision", "fp32"])
    seen, real = [], train_grpo.grpo_loss
    monkeypatch.setattr(train_grpo, "grpo_loss", lambda logps, *a, **k: seen.append((logps.detach(), k["old_logps"]))
                        or real(logps, *a, **k))
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr)
    train_grpo.policy_step(policy, policy, optimizer, run.lr_schedule(optimizer, 3, 0.0, "constant"), params, prompt,
                           rollout["completion_ids"], rollout["completion_mask"], torch.tensor([1.0, -1.0, 0.5, -0.5]),
                           args)
    first = seen[0][0]
    assert len(seen) == 3 and all(torch.equal(old, first) for _, old in seen)
    assert not torch.equal(seen[1][0], first) and not torch.equal(seen[2][0], seen[1][0])  # the policy moved


def away_from_sft(tiny_dir, lora: bool):
    """A policy (full, or a LoRA) moved off π_SFT by a fixed draw, as after a few updates, and its π_SFT (None for a
    LoRA: the adapter switched off)."""
    sft, _ = model.load_model(tiny_dir, device="cpu", dtype=torch.float32)
    torch.manual_seed(0)  # LoRA's A: the same draw every call
    policy = model.add_lora(sft, r=4, alpha=8, dropout=0.0) if lora else sft
    generator = torch.Generator().manual_seed(0)
    for name, p in policy.named_parameters():
        p.requires_grad_(not lora or "lora_" in name)
        if p.requires_grad:
            with torch.no_grad():
                p += 0.05 * torch.randn(p.shape, generator=generator)
    return policy, None if lora else model.load_model(tiny_dir, device="cpu", dtype=torch.float32)[0]


def plain_step(policy, reference, prompt, ids, mask, advantages, args):
    """The step of Eq. 8 as one would write it with no care for memory: every completion with its own copy of its
    prompt in one forward, π_SFT a frozen copy or the LoRA switched off, π_old the first pass, one backward an
    iteration, clip, SGD."""
    prompts = model.repeat_prompts(prompt, args.group_size)
    params = [p for p in policy.parameters() if p.requires_grad]
    with torch.no_grad(), (policy.disable_adapter() if reference is None else contextlib.nullcontext()):
        ref = model.completion_logprobs(policy if reference is None else reference, prompts, ids, mask)
    old, kls, clips, norms = None, [], [], []
    for _ in range(args.iterations):
        logps = model.completion_logprobs(policy, prompts, ids, mask)
        if args.ratio_ref == "old" and old is None:
            old = logps.detach()
        loss, s = grpo_loss(logps, ref, advantages, mask, epsilon=args.epsilon, beta=args.beta, old_logps=old,
                            agg=args.loss_agg)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm).item())
        with torch.no_grad():
            for p in params:
                p -= args.lr * p.grad
                p.grad = None
        kls.append(s["kl"].item())
        clips.append(s["clip_frac"].item())
    return {"grad_norm": norms[-1], "kl": sum(kls) / len(kls), "clip_frac": sum(clips) / len(clips)}


@pytest.mark.parametrize("flags", [
    ["--loss-agg", "seq", "--micro-batch", "4"],
    ["--loss-agg", "token", "--micro-batch", "4", "--iterations", "2", "--epsilon", "0.1", "--beta", "0.3"],
    ["--loss-agg", "sum", "--micro-batch", "8", "--gradient-checkpointing", "--max-grad-norm", "0.05"],
    ["--loss-agg", "seq", "--micro-batch", "4", "--iterations", "3", "--ratio-ref", "old", "--lora"],
])
def test_policy_step_is_the_plain_step_of_eq_8(tiny_dir, records, flags):
    """policy_step (micro-batches of whole groups, each prompt run once for its G completions, the loss divided by the
    global count, π_SFT by its own path) takes the step the plain one does: same weights after, same logged grad norm
    before clipping, KL and clip fraction. The policy starts away from π_SFT, so that every term counts."""
    args = train_grpo.parse_args(["--data", "-", "--group-size", "4", "--lr", "0.5", "--precision", "fp32", *flags])
    _, processor = model.load_model(tiny_dir, device="cpu")
    prompt = data.prompt_batch(processor, records[:2])  # two images: each chunk takes its own patches
    ids, mask = data.target_batch(processor.tokenizer, records[2:10], sampler.end_of_turn(processor))  # 8 completions of unequal lengths
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, 0.3, -0.9, 0.4])
    policy, reference = away_from_sft(tiny_dir, args.lora)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr)
    stats = train_grpo.policy_step(policy, reference, optimizer, run.lr_schedule(optimizer, 4, 0.0, "constant"),
                                   params, prompt, ids, mask, advantages, args)
    plain, plain_reference = away_from_sft(tiny_dir, args.lora)
    expected = plain_step(plain, plain_reference, prompt, ids, mask, advantages, args)
    assert expected["kl"] > 1e-4 and expected["clip_frac"] > 0  # the KL and both sides of the clip are in play
    for key in ("grad_norm", "kl", "clip_frac"):
        assert stats[key] == pytest.approx(expected[key], rel=1e-4), key
    assert stats["lr"] == args.lr
    after, want = run.trainable_state(policy), run.trainable_state(plain)
    assert after.keys() == want.keys()
    for k in after:
        torch.testing.assert_close(after[k], want[k], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("flags, images", [(["--micro-batch", "4"], [1, 1, 1, 1]), (["--micro-batch", "8"], [2, 2]),
                                           (["--micro-batch", "4", "--gradient-checkpointing"], [4, 4, 4, 4])])
def test_policy_step_runs_each_prompt_once_a_micro_batch(tiny_dir, records, flags, images):
    """The step's cost: a micro-batch of --micro-batch completions (whole groups) runs each of its prompts, image
    included, once for π_SFT and once for π_θ, their KV cache shared by the G completions; with checkpointing, which
    keeps no cache, each prompt runs once for each of its completions. Two prompts, G=4."""
    args = train_grpo.parse_args(["--data", "-", "--group-size", "4", "--lr", "0.1", "--precision", "fp32", *flags])
    _, processor = model.load_model(tiny_dir, device="cpu")
    prompt = data.prompt_batch(processor, records[:2])
    ids, mask = data.target_batch(processor.tokenizer, records[2:10], sampler.end_of_turn(processor))
    policy, reference = away_from_sft(tiny_dir, lora=False)
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        policy.train()
    seen = []
    for m in (policy, reference):
        count_tower_images(m, seen)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr)
    train_grpo.policy_step(policy, reference, optimizer, run.lr_schedule(optimizer, 4, 0.0, "constant"), params, prompt,
                           ids, mask, torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, 0.3, -0.9, 0.4]), args)
    assert seen == images


def test_a_batch_of_one_token_logs_its_own_kl_and_clip(tiny_dir, records):
    """The logged KL and clip fraction are means over the batch's tokens, one token included: there they are that
    token's k3 and 1 when its ratio is clipped (ε = 0 and the advantage's sign the log-ratio's)."""
    args = train_grpo.parse_args(["--data", "-", "--group-size", "4", "--micro-batch", "4", "--epsilon", "0",
                                  "--precision", "fp32"])
    _, processor = model.load_model(tiny_dir, device="cpu")
    prompt = data.prompt_batch(processor, records[:1])
    ids, mask = data.target_batch(processor.tokenizer, records[1:5], sampler.end_of_turn(processor))
    mask = torch.zeros_like(mask)
    mask[2, 3] = 1
    policy, reference = away_from_sft(tiny_dir, lora=False)
    with torch.no_grad():
        d = (model.group_logprobs(policy, prompt, ids, mask, 4) - model.group_logprobs(reference, prompt, ids, mask, 4))[2, 3]
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    stats = train_grpo.policy_step(policy, reference, optimizer, run.lr_schedule(optimizer, 4, 0.0, "constant"), params,
                                   prompt, ids, mask, torch.tensor([0.0, 0.0, float(d.sign()), 0.0]), args)
    assert stats["clip_frac"] == 1.0
    assert stats["kl"] == pytest.approx(float(torch.exp(-d) + d - 1), rel=1e-5) and stats["kl"] > 1e-4


def test_a_loss_that_is_not_finite_stops_the_step_before_the_update(tiny_dir, records, tmp_path):
    """A NaN loss on any rank stops every rank before optimizer.step(): the weights stay as they were and the error
    names the last good checkpoint and what to try."""
    (tmp_path / "checkpoint-3").mkdir()
    args = train_grpo.parse_args(["--data", "-", "--group-size", "4", "--micro-batch", "4", "--precision", "fp32",
                                  "--out", str(tmp_path)])
    _, processor = model.load_model(tiny_dir, device="cpu")
    prompt = data.prompt_batch(processor, records[:1])
    ids, mask = data.target_batch(processor.tokenizer, records[1:5], sampler.end_of_turn(processor))
    policy, reference = away_from_sft(tiny_dir, lora=False)
    before = run.trainable_state(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(FloatingPointError, match=r"not finite.*checkpoint-3; try a lower --lr"):
        train_grpo.policy_step(policy, reference, optimizer, run.lr_schedule(optimizer, 4, 0.0, "constant"), params,
                               prompt, ids, mask, torch.tensor([1.0, float("nan"), 0.5, -0.5]), args)
    after = run.trainable_state(policy)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("loss_agg", ["seq", "token"])
def test_two_gloo_processes_take_the_same_step_as_one(sft_out, records, tmp_path, loss_agg):
    policy, processor = model.load_model(sft_out, device="cpu")
    prompt = data.prompt_batch(processor, records[:2])
    rollout = sampler.sample(policy, processor, prompt, group_size=4, max_new_tokens=12, seed=0)
    mask = rollout["completion_mask"].clone()
    mask[4:, 6:] = 0  # the second prompt's completions shorter: ranks hold different token counts
    torch.save({"prompts": prompt, "ids": rollout["completion_ids"],
                "mask": mask, "advantages": torch.tensor([1.0, -1, 0.5, -0.5, 0.2, 0.3, -0.9, 0.4])},
               tmp_path / "rollouts.pt")
    common = [sft_out, str(tmp_path / "rollouts.pt")]
    torchrun("tests/grpo_ddp_worker.py", *common, tmp_path / "ddp.safetensors", loss_agg)
    for name, micro_batch in (("one", "4"), ("one_chunk", "8")):
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "grpo_ddp_worker.py"), *common,
                        str(tmp_path / f"{name}.safetensors"), loss_agg, micro_batch], check=True, env=ENV, cwd=ROOT,
                       capture_output=True)
    a, b = load_file(tmp_path / "ddp.safetensors"), load_file(tmp_path / "one.safetensors")
    before = run.trainable_state(policy.requires_grad_(True))
    assert any(not torch.equal(a[k], before[k]) for k in a)  # the step moved the weights
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    # the loss is divided by the global count: the gradient before clipping is one process's, not N times it
    stats = [json.load(open(tmp_path / f"{name}.safetensors.stats.json")) for name in ("ddp", "one", "one_chunk")]
    assert stats[0]["grad_norm"] == pytest.approx(stats[1]["grad_norm"], rel=1e-4) and stats[1]["grad_norm"] > 0
    # the logged KL and clip fraction are token means over the whole batch: the same on 2 ranks, in 2 chunks or in 1
    assert stats[0]["kl"] > 0
    for key in ("kl", "clip_frac"):  # (k3 ~ d²/2 in fp32 carries ~1e-4 of rounding; weighting chunks differs by far more)
        assert stats[0][key] == pytest.approx(stats[1][key], rel=1e-3, abs=1e-9)
        assert stats[2][key] == pytest.approx(stats[1][key], rel=1e-3, abs=1e-9)


def test_ckpt_alone_takes_the_sft_runs_data(sft_out, synth_dir):
    assert train_grpo.sft_data(sft_out) == os.path.join(synth_dir, "train.jsonl")
    with pytest.raises(SystemExit, match="--data is needed"):
        train_grpo.sft_data(synth_dir)


def test_the_logged_lr_is_the_one_each_step_used(sft5, five, tmp_path):
    train_grpo.main(grpo_args(sft5, five, tmp_path, "--warmup-ratio", "1.0", "--lr", "3e-4"))  # 3 steps of warm-up
    assert [r["lr"] for r in metrics(tmp_path)] == pytest.approx([1e-4, 2e-4, 3e-4])


def test_truncated_completions_score_no_format_and_leave_the_loss_with_mask_truncated(sft5, five, tmp_path, monkeypatch):
    seen = []
    real = train_grpo.policy_step
    monkeypatch.setattr(train_grpo, "policy_step", lambda *a: seen.append((a[7].clone(), a[6])) or real(*a))
    train_grpo.main(grpo_args(sft5, five, tmp_path, "--max-new-tokens", "6", "--mask-truncated", "--stop-after", "1"))
    row = metrics(tmp_path)[0]
    loss_mask, ids = seen[0]
    ended = torch.isin(ids, torch.tensor(sampler.end_token_ids(model.load_processor(sft5)))).any(1)
    assert row["truncated_rate"] == pytest.approx(1 - ended.float().mean().item()) and row["truncated_rate"] > 0
    assert (loss_mask[~ended] == 0).all() and (loss_mask[ended].sum(1) > 0).all()
    assert row["format_rate"] <= 1 - row["truncated_rate"]  # a cut-off completion is never well formed


def test_held_out_evaluation_during_con_grpo(sft5, five, synth_dir, tmp_path):
    """--eval-data: every --eval-every steps and at the end, greedy answers to held-out questions, scored as
    evaluate.py scores them, their consistency by the training judge; the training rows carry the stated rate."""
    test = os.path.join(synth_dir, "test.jsonl")
    train_grpo.main(grpo_args(sft5, five, tmp_path, "--epochs", "2", "--eval-data", test, "--eval-every", "4",
                              "--eval-samples", "6"))  # 6 steps: evaluated at steps 4 and 6
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows if "eval_accuracy_greedy" in r] == [4, 6]
    last = rows[-1]
    import answers
    judge = rewards.Judge(*model.load_judge(sft5, device="cpu"))  # --judge self: π_SFT's weights
    policy, processor = model.load_model(str(tmp_path), device="cpu")
    expected = answers.metrics(answers.answer(policy, processor, data.load_jsonl(test)[:6], judge=judge, greedy=True,
                                              seed=None, max_new_tokens=96))
    assert last["eval_accuracy_greedy"] == expected["overall"] and last["eval_format_greedy"] == expected["format_rate"]
    assert last["eval_consistency_greedy"] == expected["consistency_rate"]
    assert all(0 <= r["stated_rate"] <= 1 for r in rows)


def test_report_to_tensorboard_holds_the_rows_of_metrics_jsonl(sft5, five, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train_grpo.main(grpo_args(sft5, five, tmp_path, "--report-to", "tensorboard", "--stop-after", "2",
                              "--log-samples-every", "1"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    rows = metrics(tmp_path)
    numbers = {k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
    assert set(events.Tags()["scalars"]) == numbers and {"reward", "kl", "consistency_rate", "lr"} <= numbers
    for key in numbers:  # TensorBoard keeps float32
        assert [e.step for e in events.Scalars(key)] == [r["step"] for r in rows]
        assert [e.value for e in events.Scalars(key)] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-12)
    assert "samples/text_summary" in events.Tags()["tensors"]  # the sampled completions, as a text table


def test_report_to_wandb_offline_writes_its_run_and_a_missing_backend_names_the_pip_command(sft5, five, tmp_path,
                                                                                            monkeypatch):
    pytest.importorskip("wandb")
    import glob
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_grpo.main(grpo_args(sft5, five, tmp_path / "w", "--report-to", "wandb", "--stop-after", "2",
                              "--log-samples-every", "1"))
    (run_file,) = glob.glob(str(tmp_path / "w" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert os.path.getsize(run_file) > 0 and glob.glob(str(tmp_path / "w" / "wandb" / "offline-run-*" / "files" / "media"
                                                          / "table" / "samples_*.table.json"))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"--report-to wandb needs the wandb package: pip install -r requirements-report.txt"):
        train_grpo.main(grpo_args(sft5, five, tmp_path / "x", "--report-to", "wandb"))
