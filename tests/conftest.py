import os
import sys

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is built offline; a download attempt is a bug
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import model  # noqa: E402


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic MedAD set: train.jsonl, test.jsonl, images/, masks/."""
    out = str(tmp_path_factory.mktemp("synth"))
    data.synth(out, n_images=60, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, synth_dir):
    """The tiny random Qwen2.5-VL with a tokenizer trained on the synthetic set's text."""
    out = str(tmp_path_factory.mktemp("tiny"))
    corpus = list(model.corpus_lines([os.path.join(synth_dir, "train.jsonl")]))
    return model.build_tiny(out, seed=0, corpus=corpus, vocab_size=512)


@pytest.fixture(scope="session")
def records(synth_dir):
    return data.load_jsonl(os.path.join(synth_dir, "train.jsonl"))


@pytest.fixture()
def tiny(tiny_dir):
    return model.load_model(tiny_dir, device="cpu")
