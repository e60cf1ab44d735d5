"""Crashes and full disks: a run killed while it writes, or refused space, resumes to the uninterrupted result."""
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, grpo_args
from safetensors.torch import load_file

import model as M
import run
import train_grpo

TIMING = ("t_sample", "t_judge", "t_loss", "peak_mem_gb")


def outcome(out):
    """The final weights and the metrics without their timings."""
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in open(out / "metrics.jsonl")]
    return load_file(out / "model.safetensors"), rows


@pytest.fixture(scope="module")
def straight(sft5, five, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train_grpo.main(grpo_args(sft5, five, out, "--save-every", "1"))
    return outcome(out)


def same(a, b):
    (wa, ra), (wb, rb) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ra == rb


@pytest.mark.parametrize("when", ["checkpoint", "final"])
def test_a_run_killed_while_it_writes_resumes_to_the_uninterrupted_result(sft5, five, straight, tmp_path, when):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": ROOT}
    killed = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kill_worker.py"), when,
                             *grpo_args(sft5, five, out, "--save-every", "1")], env=env, cwd=ROOT, capture_output=True,
                            encoding="utf-8", errors="replace", timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not os.path.exists(out / "DONE")
    if when == "checkpoint":  # checkpoint-2 half written: checkpoint-1 is the newest complete one
        assert os.path.isdir(out / "checkpoint-2.tmp") and run.latest_checkpoint(str(out)).endswith("checkpoint-1")
        assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1, 2]
    else:  # the weights moved into OUT, not yet its config: the folder does not load as a model
        assert os.path.isfile(out / "model.safetensors") and not os.path.exists(out / "config.json")
        with pytest.raises(Exception):
            M.load_model(str(out), device="cpu")
    train_grpo.main(grpo_args(sft5, five, out, "--save-every", "1", "--resume"))
    same(outcome(out), straight)
    assert os.path.isfile(out / "DONE") and not os.path.exists(out / ".final.tmp")


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(sft5, five, straight, tmp_path, monkeypatch):
    import safetensors.torch
    real = safetensors.torch.save_file

    def full_disk(tensors, path, *args, **kwargs):
        if "checkpoint-2" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match=r"checkpoint-2: \[Errno 28\] No space left.*still .*checkpoint-1: make room"):
        train_grpo.main(grpo_args(sft5, five, tmp_path, "--save-every", "1"))
    assert run.latest_checkpoint(str(tmp_path)).endswith("checkpoint-1")
    assert not os.path.exists(tmp_path / "checkpoint-2.tmp")  # the partial write is cleaned up, its space freed
    monkeypatch.undo()
    train_grpo.main(grpo_args(sft5, five, tmp_path, "--save-every", "1", "--resume"))
    same(outcome(tmp_path), straight)
