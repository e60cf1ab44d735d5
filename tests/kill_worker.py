"""train_grpo.py that SIGKILLs itself at one moment of its writes (a test helper, as a crash or a preemption would):
`checkpoint`: halfway through checkpoint-2's optimizer state; `final`: once the final weights are in OUT, before the
config that makes the folder loadable.

    python tests/kill_worker.py checkpoint|final TRAIN_GRPO_ARGS...
"""
import os
import signal
import sys

import torch

import train_grpo

when, argv = sys.argv[1], sys.argv[2:]
real_save, real_replace = torch.save, os.replace


def save(obj, path, *args, **kwargs):
    if when == "checkpoint" and "checkpoint-2.tmp" in str(path) and str(path).endswith("optimizer.pt"):
        with open(path, "wb") as f:
            f.write(b"the first bytes of the optimizer state")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *args, **kwargs)


def replace(src, dst):
    real_replace(src, dst)
    if when == "final" and ".final.tmp" in str(src) and str(dst).endswith("model.safetensors"):
        os.kill(os.getpid(), signal.SIGKILL)


torch.save, os.replace = save, replace
train_grpo.main(argv)
