"""Shared set-up of the benchmarks: the tiny model and synthetic prompts, built offline in a temporary folder."""
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import data  # noqa: E402
import model as M  # noqa: E402
import precision  # noqa: E402,F401  (the benchmarks import it from here)
import sampler  # noqa: E402,F401  (the benchmarks import it from here)
import synth  # noqa: E402
import tiny  # noqa: E402

SIZES = {  # the benchmarks' model and image sizes
    "tiny": dict(hidden=64, layers=2, heads=4, image_px=112),  # 0.4M parameters, 16 image tokens
    "small": dict(hidden=512, layers=4, heads=4, image_px=448),  # ~16M parameters, 256 image tokens
    "gpu": dict(hidden=1024, layers=8, heads=16, image_px=448),  # 127M parameters
    "3b": dict(hidden=2048, layers=36, heads=16, image_px=448),  # Qwen2.5-VL-3B's text widths: 2.27B parameters
}


def tiny_setup(n_images=40, hidden=64, layers=2, heads=4, image_px=112, seed=0, build=True, family="qwen2.5-vl"):
    """(model, processor, records, folder) of a fresh tiny model of `family` (folder/tiny) and a synthetic set; with
    build=False only the set (model and processor are None)."""
    folder = tempfile.mkdtemp(prefix="medad-bench-")
    synth.synth(os.path.join(folder, "data"), n_images=n_images, seed=seed, size=image_px)
    train = os.path.join(folder, "data", "train.jsonl")
    if not build:
        return None, None, data.load_jsonl(train), folder
    tiny.build_tiny(os.path.join(folder, "tiny"), family=family, seed=seed, corpus=list(tiny.corpus_lines([train])),
                    hidden=hidden, layers=layers, heads=heads, image_px=image_px if family == "qwen2.5-vl" else None)
    policy, processor = M.load_model(os.path.join(folder, "tiny"), device="cpu")
    return policy, processor, data.load_jsonl(train), folder


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bandwidth() -> float:
    """Bytes per second a device-to-device copy of 2 GiB moves (read + write), the best of 5."""
    x = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)  # warm-up
    times = []
    for _ in range(5):
        sync()
        start = time.perf_counter()
        y.copy_(x)
        sync()
        times.append(time.perf_counter() - start)
    return 2 * x.numel() / min(times)
