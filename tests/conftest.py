import json
import os
import sys

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is built offline; a download attempt is a bug
os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # before torch loads OpenMP, as the scripts set it (docs/scale.md)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import model  # noqa: E402
import synth  # noqa: E402
from helpers import built_once  # noqa: E402
from tiny import build_tiny, corpus_lines  # noqa: E402


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic MedAD set: train.jsonl, test.jsonl, images/, masks/."""
    return built_once("synth", tmp_path_factory, lambda out: synth.synth(out, n_images=60, seed=0))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, synth_dir):
    """The tiny random Qwen2.5-VL with a tokenizer trained on the synthetic set's text."""
    corpus = list(corpus_lines([os.path.join(synth_dir, "train.jsonl")]))
    return built_once("tiny", tmp_path_factory, lambda out: build_tiny(out, seed=0, corpus=corpus, vocab_size=512))


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory, synth_dir):
    """The tiny random Qwen3-VL (tiny.py --family qwen3-vl), its tokenizer trained on the same text."""
    corpus = list(corpus_lines([os.path.join(synth_dir, "train.jsonl")]))
    return built_once("qwen3", tmp_path_factory, lambda out: build_tiny(out, family="qwen3-vl", seed=0, corpus=corpus,
                                                                        vocab_size=512))


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory, synth_dir):
    """The tiny random Gemma 3 (tiny.py --family gemma3: MedGemma's architecture), its tokenizer trained on the same
    text."""
    corpus = list(corpus_lines([os.path.join(synth_dir, "train.jsonl")]))
    return built_once("gemma3", tmp_path_factory, lambda out: build_tiny(out, family="gemma3", seed=0, corpus=corpus,
                                                                         vocab_size=512))


@pytest.fixture(scope="session")
def family_dirs(tiny_dir, qwen3_dir, gemma3_dir):
    return {"qwen2.5-vl": tiny_dir, "qwen3-vl": qwen3_dir, "gemma3": gemma3_dir}


@pytest.fixture(params=["qwen2.5-vl", "qwen3-vl", "gemma3"])
def family_dir(request, family_dirs):
    """Each family's tiny model folder in turn: a test that takes it runs for every family of model.FAMILIES."""
    return family_dirs[request.param]


@pytest.fixture()
def vlm(family_dir):
    return model.load_model(family_dir, device="cpu")


@pytest.fixture(scope="session")
def records(synth_dir):
    return data.load_jsonl(os.path.join(synth_dir, "train.jsonl"))


@pytest.fixture()
def tiny(tiny_dir):
    return model.load_model(tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def five(synth_dir):
    """Five training questions: with 2 prompts a step the epoch's last batch has one, which two ranks cannot share."""
    records = [json.loads(line) for line in open(os.path.join(synth_dir, "train.jsonl"))][:5]
    path = os.path.join(synth_dir, "five.jsonl")
    data.write_jsonl(path, records)
    return path


@pytest.fixture(scope="session")
def sft5(tiny_dir, five, tmp_path_factory):
    """A LoRA SFT that nearly learned the five: its sampled groups get unequal rewards, so GRPO steps move weights."""
    import train_sft
    return built_once("sft5", tmp_path_factory, lambda out: train_sft.main([
        "--model", tiny_dir, "--data", five, "--out", out, "--epochs", "15", "--batch-size", "4", "--micro-batch", "4",
        "--lr", "1e-2", "--lora-r", "32", "--lora-alpha", "64", "--lora-dropout", "0", "--warmup-ratio", "0"]))
