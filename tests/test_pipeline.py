"""The demo in small: synthetic set -> tiny model -> judge -> SFT -> Con-GRPO -> evaluate, end to end."""
import json
import os

import numpy as np
import torch

import data
import evaluate
import model
import rewards
import synth
import tiny
import train_grpo
import train_sft


def test_sft_beats_the_untrained_model_and_the_pipeline_runs_end_to_end(tmp_path):
    synth.synth(str(tmp_path / "data"), n_images=600, seed=0, shuffle_options=False)
    train, test = str(tmp_path / "data" / "train.jsonl"), str(tmp_path / "data" / "test.jsonl")
    untrained = tiny.build_tiny(str(tmp_path / "tiny"), seed=0, corpus=list(tiny.corpus_lines([train])), vocab_size=1024)
    small = ["--batch-size", "16", "--micro-batch", "16", "--lr", "1.5e-3", "--full"]
    train_sft.main(["--model", untrained, "--data", train, "--out", str(tmp_path / "judge"), "--judge", "--epochs", "1", *small,
                    "--eval-data", test, "--eval-every", "1000", "--eval-samples", "64"])  # evaluated at the last step
    train_sft.main(["--model", untrained, "--data", train, "--out", str(tmp_path / "sft"), "--train-vision", "--epochs", "4", *small])
    train_grpo.main(["--ckpt", str(tmp_path / "sft"), "--out", str(tmp_path / "grpo"), "--judge", str(tmp_path / "judge"),
                     "--epochs", "0.005", "--max-new-tokens", "64", "--lr", "3e-4"])
    evaluate.main(["--ckpt", untrained, str(tmp_path / "sft"), str(tmp_path / "grpo"), "--names", "untrained", "sft", "grpo",
                   "--data", test, "--out", str(tmp_path / "eval"), "--temperature", "0", "--seeds", "0",
                   "--max-new-tokens", "64", "--judge", str(tmp_path / "judge"), "--limit", "150"])
    results = {r["name"]: r["mean"] for r in json.load(open(tmp_path / "eval" / "results.json"))["results"]}
    untrained, sft = results["untrained"], results["sft"]
    assert sft["format_rate"] > 0.8 > untrained["format_rate"]  # measured: 0.91 and 0.0
    assert sft["overall"] > max(untrained["overall"], 0.25) + 0.05, (sft["overall"], untrained["overall"])  # 0.41, 0.0
    assert os.path.isfile(tmp_path / "grpo" / "model.safetensors") and results["grpo"]["format_rate"] > 0.5
    rows = [json.loads(line) for line in open(tmp_path / "grpo" / "metrics.jsonl")]
    assert any(r["zero_adv_groups"] < 1 for r in rows) and rows[-1]["kl"] > 0  # rewards differed; π_θ left π_SFT
    grpo, sft = model.load_model(str(tmp_path / "grpo"), device="cpu")[0], model.load_model(str(tmp_path / "sft"), device="cpu")[0]
    moved = [n for n, p in grpo.named_parameters() if not torch.equal(p, sft.get_parameter(n))]
    assert moved and all("visual" not in n for n in moved)  # the language model trained, the vision tower frozen
    judge, held_out = rewards.Judge(*model.load_judge(str(tmp_path / "judge"), device="cpu")), data.load_jsonl(test)
    letters = judge([r["question"] for r in held_out], [r["options"] for r in held_out], [r["cot"] for r in held_out])
    assert np.mean([a == r["answer"] for a, r in zip(letters, held_out)]) > 0.5  # the gold CoTs' letter; measured 0.74
    last = json.loads(open(tmp_path / "judge" / "metrics.jsonl").readlines()[-1])
    assert last["eval_judge_accuracy"] > 0.5 and last["eval_loss"] < 1.0
