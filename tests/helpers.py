"""What several test files share: the repository root, torchrun in a subprocess, Con-GRPO's small test settings."""
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args, nproc=2):
    """Run a script of the repository under torchrun with `nproc` gloo processes; fail with the end of its output."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_port", str(free_port()), os.path.join(ROOT, script), *map(str, args)],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def grpo_args(ckpt, data_path, out, *extra):
    """train_grpo.py on the `five` set from the `sft5` checkpoint: 2 prompts x G=4 a step, 3 steps an epoch."""
    return ["--ckpt", ckpt, "--data", data_path, "--out", str(out), "--group-size", "4", "--prompts-per-step", "2",
            "--max-new-tokens", "96", "--micro-batch", "4", "--lr", "1e-3", *extra]


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
