import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ENV, ROOT, torchrun
from safetensors.torch import load_file

import data
import model
import sampler
import train_sft

@pytest.fixture(scope="module")
def eight(synth_dir, tmp_path_factory):
    """8 training examples, as a JSONL beside the synthetic images."""
    records = [json.loads(l) for l in open(os.path.join(synth_dir, "train.jsonl"))][:8]
    path = os.path.join(synth_dir, "eight.jsonl")
    data.write_jsonl(path, records)
    return path


def run(tiny_dir, data_path, out, *extra):
    return train_sft.main(["--model", tiny_dir, "--data", data_path, "--out", str(out), "--lora-r", "8",
                           "--lora-alpha", "16", "--warmup-ratio", "0", *extra])


def test_overfits_eight_examples_and_reloads_with_peft(tiny_dir, eight, tmp_path):
    policy = run(tiny_dir, eight, tmp_path, "--epochs", "60", "--batch-size", "8", "--micro-batch", "4",
                 "--lr", "1e-2", "--lora-dropout", "0", "--lora-r", "32", "--lora-alpha", "64")
    losses = [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl")]
    assert losses[0] > 1.0 and losses[-1] < 0.05
    policy.eval()
    _, processor = model.load_model(str(tmp_path), device="cpu")
    records = data.load_jsonl(eight)
    prompt = data.prompt_batch(processor, records)
    texts = sampler.sample(policy, processor, prompt, greedy=True, max_new_tokens=80)["texts"]
    assert texts == [data.target(r) for r in records]
    # the folder holds a standard PEFT adapter: PeftModel.from_pretrained gives the same logits
    from peft import PeftModel
    assert {"adapter_model.safetensors", "adapter_config.json", "args.json", "tokenizer.json"} <= set(os.listdir(tmp_path))
    base, _ = model.load_model(tiny_dir, device="cpu")
    reloaded = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**prompt).logits, policy(**prompt).logits, atol=1e-5, rtol=1e-5)
        merged, _ = model.load_model(str(tmp_path), device="cpu")  # the project's loader merges the adapter
        torch.testing.assert_close(merged(**prompt).logits, policy(**prompt).logits, atol=1e-4, rtol=1e-4)


def test_resume_equals_an_uninterrupted_run(tiny_dir, synth_dir, tmp_path):
    train = os.path.join(synth_dir, "train.jsonl")
    common = ["--epochs", "1", "--batch-size", "16", "--micro-batch", "8", "--lr", "1e-3"]  # dropout stays on
    straight = tmp_path / "straight"
    run(tiny_dir, train, straight, *common, "--stop-after", "6")
    resumed = tmp_path / "resumed"
    run(tiny_dir, train, resumed, *common, "--stop-after", "3")
    assert os.path.isdir(resumed / "checkpoint-3") and not os.path.exists(resumed / "adapter_model.safetensors")
    run(tiny_dir, train, resumed, *common, "--stop-after", "6", "--resume")
    a = load_file(straight / "checkpoint-6" / "trainable.safetensors")
    b = load_file(resumed / "checkpoint-6" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(resumed / "checkpoint-3" / "trainable.safetensors")
    assert any(not torch.equal(a[k], base[k]) for k in a)  # the second half did train


def test_two_gloo_processes_equal_one(tiny_dir, synth_dir, tmp_path):
    train = os.path.join(synth_dir, "train.jsonl")
    args = ["--model", tiny_dir, "--data", train, "--epochs", "1", "--batch-size", "16", "--micro-batch", "4",
            "--lr", "1e-3", "--lora-dropout", "0", "--lora-r", "8", "--lora-alpha", "16", "--stop-after", "3"]
    torchrun("train_sft.py", *args, "--out", tmp_path / "ddp")
    subprocess.run([sys.executable, os.path.join(ROOT, "train_sft.py"), *args, "--out", str(tmp_path / "one")],
                   check=True, env=ENV, cwd=ROOT, capture_output=True)
    a = load_file(tmp_path / "ddp" / "checkpoint-3" / "trainable.safetensors")
    b = load_file(tmp_path / "one" / "checkpoint-3" / "trainable.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    losses = [[json.loads(l)["loss"] for l in open(tmp_path / d / "metrics.jsonl")] for d in ("ddp", "one")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_group_by_image_takes_the_plain_step(tiny_dir, eight, tmp_path):
    """--group-by-image over a one-batch epoch (the eight questions of a few images): the same step as the plain run,
    the vision tower's weights included, from one tower pass an image."""
    assert len({r["image"] for r in data.load_jsonl(eight)}) < 8  # images with several questions each
    common = ["--full", "--train-vision", "--epochs", "1", "--batch-size", "8", "--micro-batch", "8", "--lr", "1e-2"]
    run(tiny_dir, eight, tmp_path / "plain", *common)
    run(tiny_dir, eight, tmp_path / "grouped", *common, "--group-by-image")
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "grouped" / "model.safetensors")
    start = load_file(os.path.join(tiny_dir, "model.safetensors"))
    vision = next(k for k in a if "visual" in k and "weight" in k)
    assert not torch.equal(a[vision], start[vision])  # the tower moved
    for k in a:  # Adam's first step is about lr·sign(g): gradients at rounding level move a weight by up to 1e-5
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)
    with pytest.raises(SystemExit, match="drop one of --group-by-image and --fsdp"):
        run(tiny_dir, eight, tmp_path / "refused", *common, "--group-by-image", "--fsdp")


def test_bad_data_fails_before_training(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "task": "anatomy"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: image: missing"):
        run(tiny_dir, str(bad), tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_bf16_precision_trains_fp32_adapters_on_a_bf16_base(tiny_dir, eight, tmp_path):
    policy = run(tiny_dir, eight, tmp_path, "--epochs", "2", "--batch-size", "4", "--micro-batch", "4", "--lr", "1e-2",
                 "--precision", "bf16")
    dtypes = {n: p.dtype for n, p in policy.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)  # trained: fp32 master weights
    assert any(d == torch.bfloat16 for n, d in dtypes.items() if "q_proj.base_layer" in n)  # frozen base: bf16
    losses = [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert json.load(open(tmp_path / "args.json"))["precision"] == "bf16"


@pytest.mark.parametrize("cot, words", [("", "cot: empty"), ("   ", "cot: empty"),
                                        ("so </think><answer>B", "cot: holds </think>, <answer>"),
                                        ("ends here<|im_end|>", r"cot: holds <\|im_end\|>")])
def test_sft_targets_a_reward_would_score_0_are_refused(tiny_dir, synth_dir, tmp_path, cot, words):
    records = [json.loads(l) for l in open(os.path.join(synth_dir, "train.jsonl"))][:3]
    records[1]["cot"] = cot
    path = os.path.join(synth_dir, f"bad_cot_{abs(hash(cot))}.jsonl")
    data.write_jsonl(path, records)
    with pytest.raises(ValueError, match=rf"bad_cot_\d+.jsonl:2: {words}"):
        run(tiny_dir, path, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_the_logged_lr_is_the_one_each_step_used(tiny_dir, eight, tmp_path):
    run(tiny_dir, eight, tmp_path, "--epochs", "4", "--batch-size", "8", "--micro-batch", "8", "--lr", "1e-2",
        "--warmup-ratio", "0.5")  # 4 steps: warm-up over 2, then cosine over 2
    logged = [json.loads(l)["lr"] for l in open(tmp_path / "metrics.jsonl")]
    assert logged == pytest.approx([0.5e-2, 1e-2, 1e-2, 0.5e-2])


def test_the_in_training_evaluation_parses_answers_as_evaluate_does(tiny, records, monkeypatch):
    m, processor = tiny
    chunk = records[:3]
    right = [r["answer"] for r in chunk]
    wrong = ["A" if a != "A" else "B" for a in right]
    texts = [f"<think>x</think><answer> {right[0]} </answer>",  # spaces: right (the old substring test missed it)
             f"<think>x</think><answer>{chunk[1]['options']['ABCD'.index(right[1])]}</answer>",  # the option's text
             f"<think>I say <answer>{right[2]}</answer></think><answer>{wrong[2]}</answer>"]  # inside the thought: no
    fake = {"texts": texts, "ended": torch.tensor([True, True, False]), "completion_mask": torch.ones(3, 4)}
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: fake)
    out = train_sft.evaluate_sft(m, processor, chunk, micro_batch=3, max_new_tokens=8)
    assert out["eval_accuracy_greedy"] == pytest.approx(2 / 3) and out["eval_format_greedy"] == pytest.approx(2 / 3)
