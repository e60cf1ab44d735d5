"""Any vision-language model as a baseline row of Table 1 and as cots.py's describer: a tiny random LLaVA (a family
that does not train here), with its own processor, through the plain `generate` path with the same prompt, parsing and
metrics; beside rows of the families that train (Gemma 3, Qwen2.5-VL), which decode through the sampler."""
import json
import os
import shutil

import pytest
import torch
from tiny_vlms import build_llava

import answers
import cots
import data
import evaluate
import model
import rewards
import sampler
from tiny import corpus_lines

BUILDERS = {"llava": build_llava}


@pytest.fixture(scope="module")
def vlms(synth_dir, tmp_path_factory):
    corpus = list(corpus_lines([os.path.join(synth_dir, "train.jsonl")]))
    folder = tmp_path_factory.mktemp("vlms")
    return {arch: build(str(folder / arch), corpus) for arch, build in BUILDERS.items()}


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_another_architecture_answers_the_same_prompt_through_generate(vlms, synth_dir, arch, monkeypatch):
    m, processor = model.load_model(vlms[arch], device="cpu")
    assert m.config.model_type == arch and type(processor).__module__.startswith("transformers.")  # its own processor
    records = data.load_jsonl(os.path.join(synth_dir, "test.jsonl"))[:3]
    prompt = data.prompt_batch(processor, records)
    text = processor.tokenizer.decode(prompt["input_ids"][-1], skip_special_tokens=False)
    assert records[-1]["question"] in text and data.format_options(records[-1]["options"]) in text
    assert data.SYSTEM_PROMPT in text  # the system instruction reaches the model whatever its template does with it
    fast = []
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: fast.append(1))  # Qwen2.5-VL's path must not be taken
    rows = answers.answer(m, processor, records, seed=0, max_new_tokens=10, batch_size=3)
    assert not fast and len(rows) == 3
    tok = processor.tokenizer
    for r in rows:  # parsed and scored by the same rules as any row
        assert r["format_ok"] == (rewards.format_reward(r["completion"], r["ended"], sampler.special_tokens(tok)) == 1.0)
        assert r["letter"] == rewards.answer_letter(r["completion"], next(x for x in records if x["id"] == r["id"])["options"])
        assert 1 <= r["completion_tokens"] <= 10 and (r["ended"] or r["completion_tokens"] == 10)


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_the_generate_path_decodes_the_model_not_its_checkpoints_chat_settings(vlms, synth_dir, arch, tmp_path):
    chatty = tmp_path / "chatty"
    shutil.copytree(vlms[arch], chatty)
    config = json.load(open(chatty / "generation_config.json"))
    config.update(repetition_penalty=1.5, top_k=1, temperature=0.1, do_sample=True, no_repeat_ngram_size=2,
                  min_new_tokens=8)
    json.dump(config, open(chatty / "generation_config.json", "w"))
    records = data.load_jsonl(os.path.join(synth_dir, "test.jsonl"))[:2]
    outs = []
    for folder in (vlms[arch], str(chatty)):
        m, processor = model.load_model(folder, device="cpu")
        prompt = data.prompt_batch(processor, records)
        outs.append([sampler.generate(m, processor, prompt, max_new_tokens=16, **kwargs)["completion_ids"]
                     for kwargs in (dict(greedy=True), dict(group_size=3, seed=4))])
    for plain, chat in zip(*outs):
        assert torch.equal(plain, chat)
    m, processor = model.load_model(vlms[arch], device="cpu")
    out = sampler.generate(m, processor, data.prompt_batch(processor, records), group_size=3, seed=4, max_new_tokens=16)
    assert out["completion_ids"].shape[0] == 6 and len(out["texts"]) == 6  # G completions a prompt, grouped
    specials = set(processor.tokenizer.all_special_ids) - set(sampler.end_token_ids(processor, m))
    assert not torch.isin(out["completion_ids"][out["completion_mask"].bool()], torch.tensor(sorted(specials))).any()


def test_table1_rows_of_three_architectures_with_one_judge(vlms, gemma3_dir, tiny_dir, synth_dir, tmp_path):
    out = tmp_path / "eval"
    report = evaluate.main(["--ckpt", gemma3_dir, vlms["llava"], tiny_dir, "--names", "Gemma 3", "LLaVA", "Qwen2.5-VL",
                            "--data", os.path.join(synth_dir, "test.jsonl"), "--out", str(out), "--seeds", "0", "1",
                            "--limit", "6", "--max-new-tokens", "12", "--judge", tiny_dir])
    assert [r["name"] for r in report["results"]] == ["Gemma 3", "LLaVA", "Qwen2.5-VL"]
    assert report["judge"]["model"] == tiny_dir and "given with --judge" in report["judge"]["how"]
    md = open(out / "results.md", encoding="utf-8").read()
    assert md.startswith(f"Consistency judged by: {tiny_dir}") and "| Gemma 3 |" in md and "| LLaVA |" in md
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl", encoding="utf-8")]
    for result in report["results"]:
        mine = [p for p in predictions if p["model"] == result["name"]]
        assert len(mine) == 12
        seed0 = answers.metrics([p for p in mine if p["seed"] == 0])
        assert result["per_seed"][0]["overall"] == seed0["overall"]


def test_cots_describer_of_another_architecture(vlms, synth_dir, tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(synth_dir, folder)
    for split in ("train", "test"):  # a few questions keep the test short
        lines = open(folder / f"{split}.jsonl").readlines()[:4]
        open(folder / f"{split}.jsonl", "w").writelines(lines)
    asked = []
    real = rewards.Judge.__call__
    summary = None
    try:
        rewards.Judge.__call__ = lambda self, q, o, t: asked.extend(t) or real(self, q, o, t)
        summary = cots.main(["--data", str(folder), "--cot-model", vlms["llava"], "--max-new-tokens", "8"])
    finally:
        rewards.Judge.__call__ = real
    assert summary["questions_before_cot_check"] == 8 and len(asked) == 8  # every CoT written, then judged
    assert os.path.isfile(folder / "train.cot.jsonl") and os.path.isfile(folder / "test.cot.jsonl")
