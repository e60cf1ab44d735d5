import csv
import filecmp
import os

import numpy as np
import pytest
from PIL import Image

import build
import data
import questions

HEADER = ["image", "mask", "source", "modality", "anatomy", "anomaly", "pathology", "patient"]


@pytest.fixture(scope="module")
def manifest(synth_dir):
    """The synthetic images and masks written as a manifest, beside them."""
    records = data.load_jsonl(os.path.join(synth_dir, "train.jsonl")) + data.load_jsonl(os.path.join(synth_dir, "test.jsonl"))
    by_image = {}
    for r in records:
        by_image.setdefault(r["image"], {})[r["task"]] = r
    path = os.path.join(synth_dir, "labels.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for image, tasks in by_image.items():
            r = tasks["anatomy"]
            pathology = tasks.get("pathology")
            w.writerow([image, r.get("mask", ""), r["source"], r["modality"], r["anatomy"],
                        "yes" if "mask" in r else "no",
                        pathology["options"]["ABCD".index(pathology["answer"])] if pathology else "", r["patient"]])
    return path, by_image


def truth(record):
    return record["options"]["ABCD".index(record["answer"])]


def test_rebuilt_localization_equals_the_synthetic_truth(manifest, tmp_path):
    path, by_image = manifest
    summary = build.build(path, str(tmp_path / "out"), seed=0)
    train = data.load_jsonl(str(tmp_path / "out" / "train.jsonl"))
    test = data.load_jsonl(str(tmp_path / "out" / "test.jsonl"))
    built = train + test
    locs = [r for r in built if r["task"] == "localization"]
    assert locs and len(locs) == sum("localization" in t for t in by_image.values())
    for r in locs:
        original = "images/" + r["image"].split("-", 1)[1]
        assert truth(r) == truth(by_image[original]["localization"])
    assert not {r["patient"] for r in train} & {r["patient"] for r in test}
    assert summary["questions_per_task"]["anatomy"] == len(by_image)
    for r in built:  # distractors never equal the answer; 4 distinct options
        assert len(set(r["options"])) == 4 and r["options"].count(truth(r)) == 1


def test_a_fixed_seed_gives_byte_identical_output(manifest, tmp_path):
    path, _ = manifest
    build.build(path, str(tmp_path / "a"), seed=5)
    build.build(path, str(tmp_path / "b"), seed=5)
    for name in ("train.jsonl", "test.jsonl", "summary.json"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)


def write_manifest(tmp_path, rows, vocab_rows=True):
    """A manifest of small images; four clean rows give each field its four values."""
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 20).astype(np.uint16)).save(tmp_path / "img16.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    lesion = np.zeros((40, 60), np.uint8)
    lesion[2:6, 2:6] = 255  # small, first in scan order, left upper
    lesion[25:38, 40:58] = 255  # largest: right lower
    Image.fromarray(lesion).save(tmp_path / "lesion.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    clean = [dict(image="img.png", source="s", modality=m, anatomy=a, anomaly="no") for m, a in
             [("MRI", "Brain"), ("CT", "Liver"), ("X-ray", "Chest"), ("Ultrasound", "Breast")]] if vocab_rows else []
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        for row in clean + rows:
            w.writerow(row)
    return str(path), 2 + len(clean)  # the csv line of the first extra row


def test_largest_component_not_the_first_decides_the_region(tmp_path):
    path, _ = write_manifest(tmp_path, [dict(image="img16.png", mask="lesion.png", source="s", modality="MRI",
                                             anatomy="Brain", anomaly="yes", pathology="Tumor", patient="p")])
    build.build(path, str(tmp_path / "out"), seed=0, test_frac=0.0,
               vocab={"pathology": ["Tumor", "Cyst", "Edema", "Infarct"]})
    records = data.load_jsonl(str(tmp_path / "out" / "train.jsonl"))
    loc = next(r for r in records if r["task"] == "localization")
    assert truth(loc) == "Right Lower"
    image = Image.open(tmp_path / "out" / loc["image"])
    assert image.mode == "RGB" and image.size == (60, 40)  # 16-bit windowed to 8-bit RGB
    assert np.asarray(image).max() == 255 and np.asarray(image).min() == 0
    assert Image.open(tmp_path / "img16.png").mode.startswith("I")  # the original untouched


@pytest.mark.parametrize("row, field, words", [
    (dict(image="missing.png", source="s", modality="MRI", anatomy="Brain", anomaly="no"), "image", "file not found"),
    (dict(image="broken.png", source="s", modality="MRI", anatomy="Brain", anomaly="no"), "image", "not a decodable"),
    (dict(image="img.png", mask="small.png", source="s", modality="MRI", anatomy="Brain", anomaly="yes"), "mask",
     "differs from the image"),
    (dict(image="img.png", mask="empty.png", source="s", modality="MRI", anatomy="Brain", anomaly="yes"), "mask",
     "empty lesion mask"),
    (dict(image="img.png", source="s", modality="MRI", anatomy="Brain", anomaly="maybe"), "anomaly", "unknown value"),
    (dict(image="img.png", source="s", modality="", anatomy="Brain", anomaly="no"), "modality", "missing"),
])
def test_each_bad_row_names_manifest_line_and_field_and_nothing_is_written(tmp_path, row, field, words):
    path, line = write_manifest(tmp_path, [row])
    with pytest.raises(ValueError) as e:
        build.build(path, str(tmp_path / "out"))
    assert f"{path}:{line}: {field}: " in str(e.value) and words in str(e.value)
    assert not os.path.exists(tmp_path / "out")


def test_too_few_values_without_the_builtin_vocabulary_is_an_error(tmp_path):
    path, _ = write_manifest(tmp_path, [dict(image="img.png", source="s", modality="MRI", anatomy="Brain",
                                             anomaly="no")], vocab_rows=False)
    with pytest.raises(ValueError, match="anatomy: only 1 distinct values .*drop --no-builtin-vocab"):
        build.build(path, str(tmp_path / "out"), builtin_vocab=False)


def test_one_modality_and_one_anatomy_take_distractors_from_medad38ks_vocabulary(tmp_path):
    """A brain MRI collection: one modality, one anatomy, two pathologies (as most real sets are)."""
    rows = [dict(image="img16.png", mask="lesion.png", source="s", modality="mri", anatomy="brain", anomaly="yes",
                 pathology=p, patient=f"p{i}") for i, p in enumerate(["Glioma", "Meningioma"] * 4)]
    rows += [dict(image="img.png", source="s", modality="mri", anatomy="brain", anomaly="no", patient=f"q{i}")
             for i in range(4)]
    path, _ = write_manifest(tmp_path, rows, vocab_rows=False)
    summary = build.build(path, str(tmp_path / "out"), seed=0, vocab={"pathology": ["Metastasis"]})
    sources = summary["distractor_sources"]
    assert sources["modality"]["manifest"] == ["mri"] and "MRI" not in sources["modality"]["built-in"]
    assert sources["anatomy"]["manifest"] == ["brain"] and "Liver" in sources["anatomy"]["built-in"]
    assert sources["pathology"] == {"manifest": ["Glioma", "Meningioma"], "--vocab": ["Metastasis"],
                                    "built-in": [p for p in build.BUILTIN_VOCAB["pathology"] if p != "Glioma"]}
    records = data.load_jsonl(str(tmp_path / "out" / "train.jsonl")) + data.load_jsonl(str(tmp_path / "out" / "test.jsonl"))
    assert {r["task"] for r in records} == set(data.TASKS)
    for r in records:  # the answer once, never again as a synonym in other case ("mri" and "MRI")
        assert len({data.same_text(o) for o in r["options"]}) == 4
        assert truth(r) in {"mri", "brain", "Glioma", "Meningioma"} | set(data.ANOMALY_OPTIONS) | set(data.REGIONS)


# Pairs of which both are right for one image, stated here independently of build.py: a modality and its contrast-
# enhanced form, an organ and the region that holds it, a finding and the class that covers it.
BOTH_RIGHT = [("MRI", "CE-MRI"), ("Chest", "Lung"), *[("Tumor", p) for p in ("Glioma", "Lymphoma", "Carcinoma",
                                                                        "Melanoma", "Nevus", "Polyp", "Nodule")]]


@pytest.mark.parametrize("field", sorted(build.BUILTIN_VOCAB))
def test_the_builtin_vocabulary_never_yields_a_second_right_option(field):
    import numpy as np
    pool, rng, related = build.BUILTIN_VOCAB[field], np.random.default_rng(0), questions.related_pairs()
    both = {frozenset(map(data.same_text, pair)) for pair in BOTH_RIGHT}
    for answer in pool:
        seen = set()
        for _ in range(200):  # every distractor each answer can draw
            q = questions.make_question(field, answer, pool, rng, [], related=related)
            assert len(q["options"]) == 4 and q["options"][data.LETTERS.index(q["answer"])] == answer
            seen |= set(q["options"]) - {answer}
        assert not any(frozenset(map(data.same_text, (answer, other))) in both for other in seen), (answer, seen)
        assert len(seen) == len(pool) - 1 - sum(frozenset(map(data.same_text, (answer, o))) in both for o in pool)


def test_a_glioma_mri_set_never_offers_ce_mri_or_tumor_and_says_so(tmp_path):
    rows = [dict(image="img16.png", mask="lesion.png", source="BraTS", modality="MRI", anatomy="Brain", anomaly="yes",
                 pathology="Glioma", patient=f"p{i}") for i in range(6)]
    path, _ = write_manifest(tmp_path, rows, vocab_rows=False)
    summary = build.build(path, str(tmp_path / "out"), seed=0, vocab={"related": {"Glioma": ["Astrocytoma"]},
                                                                    "pathology": ["Astrocytoma", "Meningioma"]})
    assert summary["distractors_excluded"]["modality"] == {"MRI": ["CE-MRI"]}
    assert set(summary["distractors_excluded"]["pathology"]["Glioma"]) == {"Astrocytoma", "Tumor"}  # --vocab's too
    records = data.load_jsonl(str(tmp_path / "out" / "train.jsonl")) + data.load_jsonl(str(tmp_path / "out" / "test.jsonl"))
    options = {r["task"]: set() for r in records}
    for r in records:
        options[r["task"]] |= set(r["options"])
    assert "CE-MRI" not in options["modality"] and not {"Tumor", "Astrocytoma"} & options["pathology"]


def test_too_few_distractors_that_are_not_also_right_is_an_error(tmp_path):
    rows = [dict(image="img16.png", mask="lesion.png", source="s", modality="MRI", anatomy="Brain", anomaly="yes",
                 pathology=p, patient=f"p{i}") for i, p in enumerate(["Tumor", "Glioma", "Lymphoma", "Cyst"])]
    path, _ = write_manifest(tmp_path, rows, vocab_rows=False)
    with pytest.raises(ValueError, match="pathology: 'Tumor' has 1 distractors that are not also right"):
        build.build(path, str(tmp_path / "out"), builtin_vocab=False, vocab={"anatomy": ["Liver", "Lung", "Skin"],
                                                                             "modality": ["CT", "OCT", "X-ray"]})


def test_a_manifest_with_a_byte_order_mark_and_one_with_a_latin1_byte(tmp_path):
    path, line = write_manifest(tmp_path, [])
    text = open(path, encoding="utf-8").read()
    open(path, "w", encoding="utf-8-sig").write(text)
    assert build.build(path, str(tmp_path / "ok"))["images"] == 4
    open(path, "wb").write(text.replace("Brain", "Br\xe4in").encode("latin-1"))
    with pytest.raises(ValueError, match=r"m.csv:2: -: not UTF-8"):
        build.build(path, str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")


def test_the_builder_writes_what_training_reads(tmp_path):
    path, _ = write_manifest(tmp_path, [dict(image="img16.png", source="s", modality="CT", anatomy="Liver",
                                             anomaly="no", patient="p")])
    build.build(path, str(tmp_path / "out"), test_frac=0.0)
    record = next(r for r in data.load_jsonl(str(tmp_path / "out" / "train.jsonl")) if "img16" in r["image"])
    written = np.asarray(data.load_image(record))
    assert np.array_equal(written, np.asarray(data.read_image(str(tmp_path / "img16.png"))))


def test_cot_model_writes_cots_and_keeps_only_those_the_judge_follows(manifest, tiny_dir, tmp_path):
    import cots
    import model
    import rewards
    path, _ = manifest
    templated = build.build(path, str(tmp_path / "m"), seed=0)
    before = (tmp_path / "m" / "train.jsonl").read_bytes()
    summary = cots.main(["--data", str(tmp_path / "m"), "--cot-model", tiny_dir, "--max-new-tokens", "48", "--batch-size", "32"])
    assert (tmp_path / "m" / "train.jsonl").read_bytes() == before  # the templated set stays
    assert summary["questions_before_cot_check"] == templated["train"] + templated["test"]
    kept = [r for s in ("train", "test") for r in data.load_jsonl(str(tmp_path / "m" / f"{s}.cot.jsonl"))]
    assert summary["cot_keep_rate"] == pytest.approx(len(kept) / summary["questions_before_cot_check"])
    assert 0 < len(kept) < summary["questions_before_cot_check"]  # a random model's CoTs: some pass, some do not
    policy, processor = model.load_model(tiny_dir, device="cpu")
    letters = rewards.Judge(policy, processor.tokenizer)([r["question"] for r in kept], [r["options"] for r in kept],
                                                         [r["cot"] for r in kept])
    assert letters == [r["answer"] for r in kept]
    assert not any(r["cot"].startswith("The image shows") for r in kept if r["task"] == "anatomy")  # not the template
