"""Shared set-up of the benchmarks: the tiny model and synthetic prompts, built offline in a temporary folder."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import data  # noqa: E402
import model as M  # noqa: E402


def tiny_setup(n_images=40, hidden=64, layers=2, image_px=112, seed=0):
    """(model, processor, records) of a fresh tiny Qwen2.5-VL and a synthetic set."""
    folder = tempfile.mkdtemp(prefix="medad-bench-")
    data.synth(os.path.join(folder, "data"), n_images=n_images, seed=seed, size=image_px)
    train = os.path.join(folder, "data", "train.jsonl")
    M.build_tiny(os.path.join(folder, "tiny"), seed=seed, corpus=list(M.corpus_lines([train])), hidden=hidden,
                 layers=layers, image_px=image_px)
    policy, processor = M.load_model(os.path.join(folder, "tiny"), device="cpu")
    return policy, processor, data.load_jsonl(train), folder
