import json
import os

import numpy as np
import pytest
import torch

import answers
import evaluate


def pred(task, correct, *, truth="x", predicted="x", letter="A", fmt=True, consistent=True, n=10, source="s1",
         modality="MRI", stated=False):
    return {"task": task, "correct": correct, "truth_text": truth, "predicted_text": predicted, "letter": letter,
            "format_ok": fmt, "consistent": consistent, "completion_tokens": n, "source": source, "modality": modality,
            "stated": stated}


def test_metrics_on_hand_made_predictions():
    rows = [pred("anatomy", True), pred("anatomy", False, letter=None, predicted=None, fmt=False, consistent=False),
            pred("anomaly", True, truth="Abnormal", predicted="Abnormal", modality="CT"),
            pred("anomaly", False, truth="Abnormal", predicted="Normal", modality="CT"),
            pred("anomaly", True, truth="Normal", predicted="Normal", source="s2"),
            pred("localization", False, n=30, source="s2")]
    m = answers.metrics(rows)
    assert m["anatomy"] == 0.5 and m["anomaly"] == pytest.approx(2 / 3) and m["localization"] == 0.0
    assert m["modality"] is None and m["pathology"] is None  # no such questions
    assert m["overall"] == pytest.approx(3 / 6)  # all correct answers over all questions, not a mean of tasks
    assert m["format_rate"] == pytest.approx(5 / 6) and m["unparseable_rate"] == pytest.approx(1 / 6)
    assert m["consistency_rate"] == pytest.approx(5 / 6)
    assert m["sensitivity"] == 0.5 and m["specificity"] == 1.0
    assert m["completion_len"] == pytest.approx(80 / 6)
    assert m["by_source"] == {"s1": pytest.approx(2 / 4), "s2": pytest.approx(1 / 2)}
    assert m["by_modality"] == {"CT": 0.5, "MRI": pytest.approx(2 / 4)}


def test_the_denominators_and_the_positive_anomaly_answer():
    rows = [pred("anatomy", True), pred("anatomy", True, consistent=False),
            pred("anatomy", False, letter=None, predicted=None, consistent=False),  # unparseable: inconsistent
            pred("anomaly", True, truth="Abnormal", predicted="abnormal "),  # matched case and spaces aside
            pred("anomaly", False, truth="Abnormal", predicted="Artifact only"),  # a miss, not left out
            pred("anomaly", False, truth="Abnormal", predicted="Indeterminate"),
            pred("anomaly", False, truth="Abnormal", letter=None, predicted=None, consistent=False),  # unparseable: a miss
            pred("anomaly", True, truth=" normal", predicted="Normal"),
            pred("anomaly", False, truth="Normal", predicted="Artifact only")]
    m = answers.metrics(rows)
    assert m["consistency_rate"] == pytest.approx(6 / 9)  # over every question
    assert m["consistency_parsed"] == pytest.approx(6 / 7)  # over the parsed answers
    assert m["sensitivity"] == pytest.approx(1 / 4) and m["specificity"] == pytest.approx(1 / 2)
    assert answers.metrics([pred("anomaly", True, truth="Yes", predicted="Yes")])["sensitivity"] is None


def test_consistency_split_by_whether_the_thought_states_its_conclusion():
    rows = [pred("anatomy", True, stated=True), pred("anatomy", True, stated=True, consistent=False),
            pred("anatomy", True, stated=True), pred("anatomy", True, stated=False, consistent=False),
            pred("anatomy", True, stated=False, consistent=False), pred("anatomy", True, stated=False)]
    m = answers.metrics(rows)
    assert m["stated_rate"] == 0.5
    assert m["consistency_stated"] == pytest.approx(2 / 3) and m["consistency_unstated"] == pytest.approx(1 / 3)
    assert answers.metrics(rows[:3])["consistency_unstated"] is None  # no such thought: not measured, not 0


def test_a_set_without_abnormal_or_normal_answers_is_warned_about(tiny_dir, synth_dir, tmp_path, capsys):
    rows = [json.loads(l) for l in open(os.path.join(synth_dir, "test.jsonl")) if '"anomaly"' in l][:2]
    for r in rows:
        r["options"] = ["Yes", "No", "Maybe", "Unsure"]
        r["image"] = os.path.join(synth_dir, r["image"])
        r.pop("mask", None)
    path = tmp_path / "yes_no.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate.main(["--ckpt", tiny_dir, "--data", str(path), "--out", str(tmp_path / "eval"), "--seeds", "0",
                   "--max-new-tokens", "4", "--judge", "none"])
    assert "no anomaly question" in capsys.readouterr().out
    assert "What the columns count" in open(tmp_path / "eval" / "results.md", encoding="utf-8").read()


def test_mean_and_std_over_seeds():
    seeds = [{"overall": 0.5, "pathology": None, "by_source": {"a": 0.1}},
             {"overall": 0.7, "pathology": None, "by_source": {"a": 0.3}},
             {"overall": 0.9, "pathology": None, "by_source": {"a": 0.5}}]
    mean, std = evaluate.mean_std(seeds)
    assert mean["overall"] == pytest.approx(0.7) and std["overall"] == pytest.approx(0.2)  # ddof=1
    assert mean["pathology"] is None and mean["by_source"]["a"] == pytest.approx(0.3)
    assert evaluate.mean_std(seeds[:1])[1]["overall"] == 0.0


def test_end_to_end_numbers_recompute_from_predictions(tiny_dir, synth_dir, tmp_path):
    out = tmp_path / "eval"
    evaluate.main(["--ckpt", tiny_dir, tiny_dir, "--names", "a", "b", "--data", os.path.join(synth_dir, "test.jsonl"),
                   "--out", str(out), "--seeds", "0", "1", "--limit", "24", "--max-new-tokens", "16", "--judge", "self"])
    md = open(out / "results.md", encoding="utf-8").read()
    assert md.startswith("Consistency judged by: self (each model judges its own thoughts")  # said, not hidden
    for column in ("Anatomy ID.", "Anomaly Det.", "Lesion Loc.", "Modality Class.", "Pathology Char.", "Overall"):
        assert column in md.splitlines()[4]
    report = json.load(open(out / "results.json"))
    predictions = [json.loads(l) for l in open(out / "predictions.jsonl", encoding="utf-8")]
    assert len(predictions) == 2 * 2 * 24
    for result in report["results"]:
        mine = [p for p in predictions if p["model"] == result["name"]]
        overall = [np.mean([p["correct"] for p in mine if p["seed"] == s]) for s in (0, 1)]
        assert result["mean"]["overall"] == pytest.approx(np.mean(overall), abs=0)
        assert result["std"]["overall"] == pytest.approx(np.std(overall, ddof=1), abs=1e-12)
        for task in ("anatomy", "anomaly", "modality"):
            per_seed = [np.mean([p["correct"] for p in mine if p["seed"] == s and p["task"] == task]) for s in (0, 1)]
            assert result["mean"][task] == pytest.approx(np.mean(per_seed), abs=1e-12)
        fmt = [np.mean([p["format_ok"] for p in mine if p["seed"] == s]) for s in (0, 1)]
        assert result["mean"]["format_rate"] == pytest.approx(np.mean(fmt), abs=1e-12)
    a, b = ([p["completion"] for p in predictions if p["model"] == m and p["seed"] == 0] for m in "ab")
    assert a == b  # one seed, one checkpoint: the same completions


def test_an_unreadable_image_names_file_and_line(tiny_dir, synth_dir, tmp_path):
    import shutil
    folder = tmp_path / "set"
    shutil.copytree(synth_dir, folder)
    first = json.loads(open(folder / "test.jsonl").readline())
    with open(folder / first["image"], "r+b") as f:  # a valid header, then the data cut short
        f.truncate(120)
    with pytest.raises(ValueError, match=r"test.jsonl:1: image"):
        evaluate.main(["--ckpt", tiny_dir, "--data", str(folder / "test.jsonl"), "--out", str(tmp_path / "e"),
                       "--seeds", "0", "--limit", "2", "--max-new-tokens", "4", "--judge", "none"])


def test_bf16_scores_as_training_does_bf16_weights_and_an_fp32_head(tiny_dir, synth_dir, tmp_path, monkeypatch):
    import model
    loaded, real = [], model.load_model
    monkeypatch.setattr(model, "load_model", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    heads = []
    real_answer = answers.answer
    monkeypatch.setattr(answers, "answer", lambda policy, *a, **k: heads.append(
        policy.lm_head(torch.zeros(1, policy.config.text_config.hidden_size, dtype=torch.bfloat16)).dtype) or
        real_answer(policy, *a, **k))
    report = evaluate.main(["--ckpt", tiny_dir, "--data", os.path.join(synth_dir, "test.jsonl"), "--out", str(tmp_path),
                            "--seeds", "0", "--limit", "8", "--max-new-tokens", "8", "--precision", "bf16", "--judge", "self"])
    policy = loaded[0][0]
    assert policy.model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16  # a 72B baseline fits
    assert heads == [torch.float32] and report["questions"] == 8 and report["precision"] == "bf16"


def test_without_judge_evaluation_names_the_one_con_grpo_trained_with(sft5, five, tiny_dir, synth_dir, tmp_path, monkeypatch):
    from helpers import grpo_args
    import rewards
    import train_grpo
    test = os.path.join(synth_dir, "test.jsonl")
    common = ["--data", test, "--seeds", "0", "--limit", "4", "--max-new-tokens", "8"]
    with pytest.raises(SystemExit, match="--judge is needed"):
        evaluate.main(["--ckpt", tiny_dir, sft5, "--out", str(tmp_path / "e"), *common])
    train_grpo.main(grpo_args(sft5, five, tmp_path / "grpo", "--epochs", "1"))  # --judge self: π_SFT judged
    judges = []
    real = rewards.Judge.__init__
    monkeypatch.setattr(rewards.Judge, "__init__", lambda self, m, *a, **k: judges.append(m) or real(self, m, *a, **k))
    report = evaluate.main(["--ckpt", tiny_dir, sft5, str(tmp_path / "grpo"), "--out", str(tmp_path / "e"), *common])
    assert report["judge"]["model"] == os.path.abspath(sft5) and len(judges) == 1  # one judge for the three rows
    assert "Con-GRPO run" in report["judge"]["how"]
    assert open(tmp_path / "e" / "results.md", encoding="utf-8").read().startswith(f"Consistency judged by: {os.path.abspath(sft5)}")


def test_judge_none_builds_no_judge_and_leaves_the_consistency_blank(tiny_dir, synth_dir, tmp_path, monkeypatch):
    import rewards
    built = []
    monkeypatch.setattr(rewards.Judge, "__init__", lambda self, *a, **k: built.append(a))
    report = evaluate.main(["--ckpt", tiny_dir, "--data", os.path.join(synth_dir, "test.jsonl"), "--out", str(tmp_path),
                            "--seeds", "0", "1", "--limit", "6", "--max-new-tokens", "8", "--judge", "none"])
    assert built == []
    result = report["results"][0]
    assert result["mean"]["consistency_rate"] is None and result["mean"]["format_rate"] is not None
    extra = open(tmp_path / "results.md", encoding="utf-8").read().split("## Beyond the paper")[1].splitlines()
    header, row = extra[2].split(" | "), extra[4].split(" | ")
    assert row[header.index("Consistency")] == "–"
