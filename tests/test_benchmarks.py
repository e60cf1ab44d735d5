"""Each public benchmark on a small fixture in its real format (file names, nesting, keys, column names, the hub's
parquet image struct), converted into records data.load_jsonl accepts: what is kept, how options and answers are
made, what is skipped and why; bad input named by file, row and field before anything is written; a converted
benchmark evaluated end to end with the tiny model and one judge."""
import csv
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import benchmarks
import data
import evaluate

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the hub's Image feature in parquet


def jpeg(seed=0, size=32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def picture(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(jpeg(seed))


def parquet(path, columns: dict, types: dict = ()):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({k: pa.array(v, type=dict(types).get(k)) for k, v in columns.items()}), path)


# Each fixture writes the benchmark's files for `split` as downloaded under `root` and returns what the conversion must
# give: {qid: (task, options, answer letter)} of the questions kept, and the skipped counts by reason.
def omnimedvqa(root, split="test"):
    top = os.path.join(root, "OmniMedVQA")
    picture(os.path.join(top, "Images", "ACRIMA", "Im002_ACRIMA.png"))
    picture(os.path.join(top, "Images", "Chest CT Scan", "000108.png"), 1)
    qa = os.path.join(top, "QA_information")
    os.makedirs(os.path.join(qa, "Open-access"))
    os.makedirs(os.path.join(qa, "Restricted-access"))
    json.dump([{"dataset": "ACRIMA", "question_id": "ACRIMA_0001", "question_type": "Disease Diagnosis",
                "question": "Is there any glaucoma in this image?", "option_A": "No", "option_B": "Yes",
                "gt_answer": "No", "modality_type": "Fundus Photography",
                "image_path": "Images/ACRIMA/Im002_ACRIMA.png"}], open(os.path.join(qa, "Open-access", "ACRIMA.json"), "w"))
    json.dump([{"dataset": "Chest CT Scan", "question_id": "Chest CT Scan_0001", "question_type": "Modality Recognition",
                "question": "What imaging modality is this?", "option_A": "MRI", "option_B": "X-ray", "option_C": "CT",
                "option_D": "PET", "gt_answer": "ct.", "modality": "CT(Computed Tomography)",  # 'modality', a final period
                "image_path": "Images/Chest CT Scan/000108.png"},
               {"dataset": "Chest CT Scan", "question_id": "Chest CT Scan_0002", "question_type": "Modality Recognition",
                "question": "What imaging modality is this?", "option_A": "MRI", "option_B": "X-ray", "option_C": "CT",
                "gt_answer": "x_ray", "modality_type": "CT(Computed Tomography)",  # matches no option as written
                "image_path": "Images/Chest CT Scan/000108.png"}],
              open(os.path.join(qa, "Open-access", "Chest CT Scan.json"), "w"))
    json.dump([{"dataset": "RSNA", "question_id": "RSNA_0001", "question_type": "Anatomy Identification",
                "question": "Which organ is shown?", "option_A": "Lung", "option_B": "Brain", "gt_answer": "Lung",
                "modality_type": "X-Ray", "image_path": "stage_2_train_images/0001.png"}],  # in the original dataset only
              open(os.path.join(qa, "Restricted-access", "RSNA.json"), "w"))
    return root, {"ACRIMA_0001": ("Disease Diagnosis", ["No", "Yes"], "A"),
                  "Chest CT Scan_0001": ("Modality Recognition", ["MRI", "X-ray", "CT", "PET"], "C")}, \
        {"answer matches none of its options": 1, "image not shipped (a restricted-access source's: in the original "
                                                  "dataset only)": 1}


PMC_V1 = {"test": "test_clean.csv", "test-all": "test.csv", "train": "train.csv"}


def pmc_vqa(root, split="test"):
    """Version 1 (test_clean.csv, Answer_label, images/), or version 2 (test_2.csv: index, Caption, Answer a letter,
    cells ' A: Green ', questions with spaces around them, split; figures/), its rows as the Phi-4 sample quotes them."""
    if split not in PMC_V1:
        picture(os.path.join(root, "figures", "PMC8253797_Fig4_11.jpg"))
        side = split.removesuffix("-2")
        rows = [["35", "PMC8253797_Fig4_11.jpg", "A slightly altered cell . (c-c‴) ...",
                 " What color is used to label the Golgi complexes in the image?", " A: Green ", " B: Red ",
                 " C: Light blue ", " D: Yellow", "B", side],
                ["62", "PMC8253797_Fig4_11.jpg", "...", " What is the name of the artery encased and displaced in the "
                 "image? ", " A: Right Coronary Artery ", " B: Left Anterior Descending Coronary Artery ",
                 " C: Left Circumflex Artery ", " D: Superior Mesenteric Artery ", "B", side]]
        with open(os.path.join(root, f"{side}_2.csv"), "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C",
                                      "Choice D", "Answer", "split"], *rows])
        return root, {"35": ("PMC-VQA", ["Green", "Red", "Light blue", "Yellow"], "B"),
                      "62": ("PMC-VQA", ["Right Coronary Artery", "Left Anterior Descending Coronary Artery",
                                         "Left Circumflex Artery", "Superior Mesenteric Artery"], "B")}, {}
    picture(os.path.join(root, "images", "PMC1064097_F1.jpg"))
    header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    rows = [["PMC1064097_F1.jpg", "What is the uptake pattern in the breast?", "Focal uptake pattern",
             "A:Diffuse uptake pattern", " B:Focal uptake pattern ", "C:No uptake pattern",
             "D:Cannot determine from the information given", "B"],
            ["PMC1064097_F1.jpg", "Where is the lesion?", "Left breast", "A:Left breast", "B:Right breast",
             "C:Both", "D:Neither", "B"]]  # its label names another choice than its answer
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, PMC_V1[split]), "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return root, {f"{PMC_V1[split]}:1": ("PMC-VQA", ["Diffuse uptake pattern", "Focal uptake pattern",
                                                     "No uptake pattern", "Cannot determine from the information given"],
                                         "B")}, {"answer label and answer text disagree": 1}


def vqa_rad(root, split="test"):
    top = os.path.join(root, "osfstorage-archive")
    picture(os.path.join(top, "VQA_RAD Image Folder", "synpic54610.jpg"))
    base = dict(qid_linked_id="0", image_case_url="https://medpix.nlm.nih.gov/case?id=1", image_name="synpic54610.jpg",
                image_organ="HEAD", evaluation="not evaluated", question_rephrase="NULL", question_relation="NULL",
                question_frame="NULL")
    json.dump([{**base, "qid": 1, "phrase_type": "test_freeform", "question": "Are regions of the brain infarcted?",
                "question_type": "PRES", "answer": "Yes", "answer_type": "CLOSED"},
               {**base, "qid": 2, "phrase_type": "test_para", "question": "Is there a fracture?", "question_type": "ABN",
                "answer": "no", "answer_type": "CLOSED "},
               {**base, "qid": 3, "phrase_type": "freeform", "question": "Is it a CT?", "question_type": "MODALITY",
                "answer": "yes", "answer_type": "CLOSED"},  # the training split
               {**base, "qid": 4, "phrase_type": "test_freeform", "question": "Where is the lesion?",
                "question_type": "POS", "answer": "left frontal lobe", "answer_type": "OPEN"},
               {**base, "qid": 5, "phrase_type": "test_freeform", "question": "How many lesions are there?",
                "question_type": "COUNT", "answer": 2, "answer_type": "CLOSED"}],
              open(os.path.join(top, "VQA_RAD Dataset Public.json"), "w"))
    if split == "train":
        return root, {"3": ("MODALITY", ["yes", "no"], "A")}, {"another split": 4}
    return root, {"1": ("PRES", ["yes", "no"], "A"), "2": ("ABN", ["yes", "no"], "B")}, \
        {"another split": 1, "answer_type 'OPEN'": 1, "open, or closed but answered other than yes or no": 1}


def hub_yes_no(root, name, split="test"):
    """The hub's copy (flaviagiammarino/vqa-rad, flaviagiammarino/path-vqa): image bytes, question, answer, lower-cased."""
    file = f"data/{split}-00000-of-00001-e5bc3d208bb4deeb.parquet"
    parquet(os.path.join(root, file),
            {"image": [{"bytes": jpeg(0), "path": None}, {"bytes": jpeg(0), "path": None}, {"bytes": jpeg(1), "path": None}],
             "question": ["is there a mass?", "is the lung normal?", "what organ is this?"],
             "answer": ["yes", "no", "the liver"]}, {"image": IMAGE})
    return root, {f"{file}:{n}": ("yes/no", ["yes", "no"], letter) for n, letter in ((1, "A"), (2, "B"))}, \
        {"open, or closed but answered other than yes or no": 1}


def slake(root, split="test"):
    """SLAKE as the hub ships it (train.json, validation.json, test.json, imgs/); the authors' Slake1.0/ alike."""
    picture(os.path.join(root, "imgs", "xmlab102", "source.jpg"))
    base = dict(img_id=102, img_name="xmlab102/source.jpg", location="Lung", modality="CT", base_type="vqa",
                triple=["vhead", "_", "_"])
    json.dump([{**base, "qid": 11934, "question": "Does the picture contain lung?", "answer": "Yes", "q_lang": "en",
                "answer_type": "CLOSED", "content_type": "Organ"},
               {**base, "qid": 11935, "question": "Is the lung healthy?", "answer": "No", "q_lang": "en",
                "answer_type": "CLOSED", "content_type": "Abnormality"},
               {**base, "qid": 11936, "question": "Which side of lung is abnormal, left or right?", "answer": "Left",
                "q_lang": "en", "answer_type": "CLOSED", "content_type": "Position"},
               {**base, "qid": 11937, "question": "What modality is used to take this image?", "answer": "CT",
                "q_lang": "en", "answer_type": "OPEN", "content_type": "Modality"},
               {**base, "qid": 11938, "question": "图片中包含肺吗?", "answer": "是", "q_lang": "zh", "answer_type": "CLOSED",
                "content_type": "Organ"}], open(os.path.join(root, f"{split}.json"), "w", encoding="utf-8"),
              ensure_ascii=False)
    return root, {"11934": ("Organ", ["yes", "no"], "A"), "11935": ("Abnormality", ["yes", "no"], "B")}, \
        {"open, or closed but answered other than yes or no": 1, "answer_type 'OPEN'": 1, "q_lang 'zh'": 1}


def mmmu(root, split="validation"):
    """Two medical subjects; Basic_Medical_Science_1 as MMMU ships it, its D and E the same option (answer C); a
    question whose answer is one of two equal options (Materials_25 is one such, outside medicine)."""
    none = [None, None, None]
    parquet(os.path.join(root, "Clinical_Medicine", f"{split}-00000-of-00001.parquet"), {
        "id": [f"{split}_Clinical_Medicine_{n}" for n in (1, 2, 3)],
        "question": ["<image 1> The patient's chest radiograph shows what?", "Compare <image 1> and <image 2>.",
                     "What is the dose in mg?"],
        "options": ["['Pneumothorax', 'Pleural effusion', 'Consolidation', 'Normal', 'Cardiomegaly']",
                    "['A', 'B']", "[]"],
        "explanation": ["", "", ""],
        "image_1": [{"bytes": jpeg(2), "path": "1.png"}, {"bytes": jpeg(3), "path": "2.png"}, {"bytes": jpeg(4), "path": "3.png"}],
        "image_2": [None, {"bytes": jpeg(5), "path": "4.png"}, None],
        **{f"image_{k}": none for k in range(3, 8)},
        "img_type": ["['X-Ray']", "['CT']", "['Tables']"], "answer": ["B", "A", "12"],
        "topic_difficulty": ["Medium", "Hard", "Easy"],
        "question_type": ["multiple-choice", "multiple-choice", "open"], "subfield": ["Radiology"] * 3},
        {f"image_{k}": IMAGE for k in range(1, 8)})
    none = [None, None]
    parquet(os.path.join(root, "Basic_Medical_Science", f"{split}-00000-of-00001.parquet"), {
        "id": [f"{split}_Basic_Medical_Science_1", f"{split}_Basic_Medical_Science_2"],
        "question": ["What is this structure? <image 1>", "Which cell is this? <image 1>"],
        "options": ["['Alzheimer s type II astrocyte', 'Bergman gliosis', 'Corpora amylacea', "
                    "'Eosinophilic granular body', 'Eosinophilic granular body']", "['Neuron', 'Astrocyte', 'neuron ']"],
        "explanation": ["", ""], "image_1": [{"bytes": jpeg(6), "path": "5.png"}, {"bytes": jpeg(7), "path": "6.png"}],
        **{f"image_{k}": none for k in range(2, 8)}, "img_type": ["['Microscopic Images']"] * 2, "answer": ["C", "C"],
        "topic_difficulty": ["Medium"] * 2, "question_type": ["multiple-choice"] * 2, "subfield": ["Pathology"] * 2},
        {f"image_{k}": IMAGE for k in range(1, 8)})
    return root, {f"{split}_Clinical_Medicine_1": ("Clinical_Medicine", ["Pneumothorax", "Pleural effusion",
                                                                         "Consolidation", "Normal", "Cardiomegaly"], "B"),
                  f"{split}_Basic_Medical_Science_1": ("Basic_Medical_Science", [
                      "Alzheimer s type II astrocyte", "Bergman gliosis", "Corpora amylacea", "Eosinophilic granular body"],
                      "C")}, \
        {"several images, or images as options": 1, "question_type 'open'": 1, "its answer is an option listed twice": 1}


def medxpertqa(root, split="test"):
    """MedXpertQA as downloaded: MM/<split>.jsonl (options a dict A-E, label a letter, images a list, the choices also
    written into the question) and images/ from images.zip; MM-1 shows two images."""
    for name, seed in (("MM-0-a.jpeg", 0), ("MM-1-a.jpeg", 1), ("MM-1-b.jpeg", 2)):
        picture(os.path.join(root, "images", name), seed)
    options = {"A": "Lateral", "B": "Inferior", "C": "Medial", "D": "Superior", "E": "Oblique"}
    question = ("A 45-year-old woman has a mass seen on the image. What is the MOST optimal  approach for needle "
                "localization?\nAnswer Choices: " + " ".join(f"({k}) {v}" for k, v in options.items()))
    base = dict(medical_task="Diagnosis", body_system="Integumentary", question_type="Reasoning")
    os.makedirs(os.path.join(root, "MM"))
    with open(os.path.join(root, "MM", f"{split}.jsonl"), "w") as f:
        f.write(json.dumps({"id": "MM-0", "question": question, "options": options, "label": "C",
                            "images": ["MM-0-a.jpeg"], **base}) + "\n")
        f.write(json.dumps({"id": "MM-1", "question": "Compare the two figures.\nAnswer Choices: (A) a (B) b (C) c "
                            "(D) d (E) e", "options": dict(zip("ABCDE", "abcde")), "label": "E",
                            "images": ["MM-1-a.jpeg", "MM-1-b.jpeg"], **base, "question_type": "Understanding"}) + "\n")
    return root, {"MM-0": ("Reasoning", list(options.values()), "C")}, {"several images, or images as options": 1}


FIXTURES = {"omnimedvqa": omnimedvqa, "pmc-vqa": pmc_vqa, "vqa-rad": vqa_rad, "slake": slake, "mmmu": mmmu,
            "pathvqa": lambda root, split="test": hub_yes_no(root, "pathvqa", split), "medxpertqa-mm": medxpertqa}
SPLITS = [(name, split) for name in sorted(FIXTURES) for split in benchmarks.layout_splits(benchmarks.BENCHMARKS[name])]


def rows_in(files) -> int:
    """How many records the files hold, counted without the converter."""
    count = 0
    for f in files:
        if f.endswith(".parquet"):
            count += pq.read_metadata(f).num_rows
        elif f.endswith(".csv"):
            count += len(list(csv.reader(open(f, encoding="utf-8")))) - 1
        elif f.endswith(".jsonl"):
            count += sum(1 for line in open(f) if line.strip())
        else:
            count += len(json.load(open(f, encoding="utf-8")))
    return count


def test_every_benchmark_has_a_fixture():
    assert set(FIXTURES) == set(benchmarks.BENCHMARKS)


@pytest.mark.parametrize("name,split", SPLITS)
def test_each_split_as_downloaded_becomes_records_the_loader_accepts(tmp_path, name, split):
    root, expected, skipped = FIXTURES[name](str(tmp_path / "download"), split)
    summary = benchmarks.convert(name, root, str(tmp_path / "out"), split)
    records = data.load_jsonl(str(tmp_path / "out" / f"{split}.jsonl"))  # validated, images decoded
    assert {r["qid"]: (r["task"], r["options"], r["answer"]) for r in records} == expected
    assert all(r["benchmark"] == name and r["id"].startswith(f"{name}-") for r in records)
    assert summary["skipped"] == skipped and summary["questions"] == len(expected)
    files = benchmarks.find_files(name, next(lay for lay in benchmarks.BENCHMARKS[name]["layouts"]
                                             if split in lay["splits"]), split, root)[0]
    assert summary["questions"] + sum(skipped.values()) == rows_in(files)  # every record kept, or skipped by reason
    assert summary["options_merged"] == (1 if name == "mmmu" else 0)
    if name == "mmmu":
        assert records[0]["question"] == "What is this structure?"  # the placeholder taken out
    if name == "omnimedvqa":
        assert {r["source"] for r in records} == {"ACRIMA", "Chest CT Scan"} and records[1]["modality"].startswith("CT")
    if name == "medxpertqa-mm":  # the choices, offered as options, are not in the question again
        assert records[0]["question"].endswith("approach for needle localization?")
        assert records[0]["anatomy"] == "Integumentary"
    if name == "pmc-vqa" and split == "test-2":
        assert records[0]["question"] == "What color is used to label the Golgi complexes in the image?"


def test_the_hubs_vqa_rad_parquet_writes_each_image_once(tmp_path):
    root, expected, _ = hub_yes_no(str(tmp_path / "vqa_rad_hub"), "vqa-rad")
    summary = benchmarks.convert("vqa-rad", root, str(tmp_path / "out"))
    records = data.load_jsonl(str(tmp_path / "out" / "test.jsonl"))
    assert {r["qid"]: (r["task"], r["options"], r["answer"]) for r in records} == expected
    assert summary["images_written"] == 1 and len({r["image"] for r in records}) == 1  # two questions, one image
    assert os.listdir(tmp_path / "out" / "images")[0].endswith(".jpg")


def test_bad_input_is_named_by_file_row_and_field_before_anything_is_written(tmp_path):
    root, _, _ = slake(str(tmp_path / "slake"))
    rows = json.load(open(os.path.join(root, "test.json"), encoding="utf-8"))
    rows[1]["img_name"] = "xmlab9/source.jpg"  # a missing image
    rows.append(dict(rows[0]))  # a question id twice
    json.dump(rows, open(os.path.join(root, "test.json"), "w"))
    with pytest.raises(SystemExit) as error:
        benchmarks.main(["--bench", "slake", "--root", root, "--out", str(tmp_path / "out")])
    message = str(error.value)
    assert "test.json:2: image: img_name 'xmlab9/source.jpg': no such file under" in message
    assert "test.json:6: qid: question id '11934' again (first at" in message and "test.json:1)" in message
    assert not os.path.exists(tmp_path / "out" / "test.jsonl")
    mroot, _, _ = mmmu(str(tmp_path / "mmmu"))
    table = pq.read_table(os.path.join(mroot, "Clinical_Medicine", "validation-00000-of-00001.parquet")).to_pylist()
    table[0]["answer"] = "F"  # beyond its five options
    parquet(os.path.join(mroot, "Clinical_Medicine", "validation-00000-of-00001.parquet"),
            {k: [r[k] for r in table] for k in table[0]}, {f"image_{k}": IMAGE for k in range(1, 8)})
    with pytest.raises(SystemExit, match=r"validation-00000-of-00001.parquet:1: answer: 'F' is not a letter of its 5 "
                                         r"options"):
        benchmarks.main(["--bench", "mmmu", "--root", mroot, "--out", str(tmp_path / "out_m")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"--bench pmc-vqa --root .*empty: found none of \*\*/test_clean.csv"):
        benchmarks.main(["--bench", "pmc-vqa", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])


def test_parquet_without_pyarrow_names_the_pip_command(tmp_path, monkeypatch):
    root, _, _ = hub_yes_no(str(tmp_path / "pathvqa"), "pathvqa")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SystemExit, match=r"pip install -r requirements-benchmarks.txt"):
        benchmarks.main(["--bench", "pathvqa", "--root", root, "--out", str(tmp_path / "out")])


def test_the_list_says_what_each_benchmark_reads_keeps_and_skips(capsys):
    benchmarks.main(["--bench", "list"])
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in benchmarks.BENCHMARKS) and "format from" in listing
    assert "A. yes B. no" in listing and "Skipped" in listing


def test_a_converted_benchmark_evaluates_end_to_end_by_its_question_types(tiny_dir, tmp_path):
    """MMMU (five options) and VQA-RAD (two) in one file: Table 1's rows are their question types, every row judged
    by one judge, each prediction carrying the benchmark's own question id."""
    records = []
    for name, make in (("mmmu", mmmu), ("vqa-rad", vqa_rad)):
        root, _, _ = make(str(tmp_path / name))
        benchmarks.convert(name, root, str(tmp_path / name / "out"))
        for r in data.load_jsonl(str(tmp_path / name / "out" / f"{'validation' if name == 'mmmu' else 'test'}.jsonl")):
            r = {k: v for k, v in r.items() if k not in ("where", "image_path")}
            r["image"] = os.path.relpath(os.path.join(tmp_path / name / "out", r["image"]), tmp_path)
            records.append(r)
    data.write_jsonl(str(tmp_path / "both.jsonl"), records)
    report = evaluate.main(["--ckpt", tiny_dir, "--data", str(tmp_path / "both.jsonl"), "--out", str(tmp_path / "eval"),
                            "--seeds", "0", "1", "--max-new-tokens", "8", "--judge", tiny_dir])
    mean = report["results"][0]["mean"]
    assert {"Clinical_Medicine", "PRES", "ABN", "overall"} <= set(mean) and "anatomy" not in mean
    table = open(tmp_path / "eval" / "results.md", encoding="utf-8").read()
    assert "| Model | ABN | Basic_Medical_Science | Clinical_Medicine | PRES | Overall |" in table  # a benchmark's types, sorted
    predictions = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl", encoding="utf-8")]
    assert {p["qid"] for p in predictions} == {"validation_Clinical_Medicine_1", "validation_Basic_Medical_Science_1",
                                               "1", "2"}
    assert all(p["consistent"] is not None for p in predictions)  # one judge for every row


# ---- real downloads that went wrong (issue 41): each fails on the converter before it ----

def convert_fails(*args, match):
    with pytest.raises(SystemExit, match=match) as error:
        benchmarks.main(list(args))
    assert "Traceback" not in str(error.value)


def test_a_hub_cache_reads_the_snapshot_refs_main_names(tmp_path):
    """~/.cache/huggingface/hub/datasets--BoKelvin--SLAKE/{refs/main, snapshots/<commit>/...}: an older snapshot beside
    the current one is not read again (huggingface_hub docs, guides/manage-cache.md)."""
    repo = tmp_path / "hub" / "datasets--BoKelvin--SLAKE"
    old, new = "a9083ce" + "0" * 33, "be157e9" + "0" * 33  # the current one sorts last
    slake(str(repo / "snapshots" / old))
    slake(str(repo / "snapshots" / new))
    (repo / "blobs").mkdir()  # a file unchanged between the two commits: both snapshots link to one blob
    os.replace(repo / "snapshots" / new / "test.json", repo / "blobs" / "9f2c")
    os.remove(repo / "snapshots" / old / "test.json")
    for rev in (old, new):
        os.symlink("../../blobs/9f2c", repo / "snapshots" / rev / "test.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(new)
    summary = benchmarks.convert("slake", str(repo), str(tmp_path / "out"))
    assert summary["questions"] == 2 and summary["hub_snapshot"] == new
    assert {r["image"].split("/snapshots/")[1][:7] for r in data.load_jsonl(str(tmp_path / "out" / "test.jsonl"))} == \
        {new[:7]}
    os.remove(repo / "snapshots" / old / "test.json")  # the older commit's file differs from the current one's
    shutil.copy(repo / "blobs" / "9f2c", repo / "snapshots" / old / "test.json")
    (repo / "refs" / "main").unlink()  # which snapshot is current cannot be told: both places named
    convert_fails("--bench", "slake", "--root", str(repo), "--out", str(tmp_path / "o"),
                  match=rf"its test files are in two places, .*{old[:7]}.*test.json and .*{new[:7]}.*test.json")


def test_a_second_copy_or_another_benchmark_under_the_root_is_an_error_naming_both(tmp_path):
    root, _, _ = pmc_vqa(str(tmp_path / "pmc"))
    os.makedirs(os.path.join(root, "backup"))
    shutil.copy(os.path.join(root, "test_clean.csv"), os.path.join(root, "backup", "test_clean.csv"))
    convert_fails("--bench", "pmc-vqa", "--root", root, "--out", str(tmp_path / "o"),
                  match=r"in two places, .*pmc/test_clean.csv and .*pmc/backup/test_clean.csv")
    hub_yes_no(str(tmp_path / "both" / "path-vqa"), "pathvqa")  # the parent of two hub copies
    hub_yes_no(str(tmp_path / "both" / "vqa-rad"), "vqa-rad")
    convert_fails("--bench", "pathvqa", "--root", str(tmp_path / "both"), "--out", str(tmp_path / "o"),
                  match=r"in two places, .*path-vqa/data/test-.*parquet and .*vqa-rad/data/test-.*parquet")
    assert not os.path.exists(tmp_path / "o")


def test_a_symlink_loop_gives_each_question_once(tmp_path):
    root, expected, _ = slake(str(tmp_path / "slake"))
    os.symlink("..", os.path.join(root, "imgs", "up"))  # imgs/up -> the root: test.json again under imgs/up/, ...
    summary = benchmarks.convert("slake", root, str(tmp_path / "out"))
    assert summary["questions"] == len(expected) == 2 and summary["files"] == 1


def test_an_open_access_image_missing_is_an_error_a_restricted_one_is_counted(tmp_path):
    root, _, skipped = omnimedvqa(str(tmp_path / "omni"))
    os.remove(os.path.join(root, "OmniMedVQA", "Images", "ACRIMA", "Im002_ACRIMA.png"))
    convert_fails("--bench", "omnimedvqa", "--root", root, "--out", str(tmp_path / "o"),
                  match=r"Open-access/ACRIMA.json:1: image: image_path 'Images/ACRIMA/Im002_ACRIMA.png': no such file")
    convert_fails("--bench", "omnimedvqa", "--root", root, "--out", str(tmp_path / "o"), "--limit", "-1",
                  match=r"--limit -1: give 0")


def test_the_output_folder_is_never_mixed_and_nothing_is_written_before_every_problem_is_known(tmp_path):
    root, _, _ = slake(str(tmp_path / "slake"))
    out = str(tmp_path / "out")
    benchmarks.main(["--bench", "slake", "--root", root, "--out", out])
    vroot, _, _ = vqa_rad(str(tmp_path / "vqa_rad"))
    convert_fails("--bench", "vqa-rad", "--root", vroot, "--out", out, match=r"--out .*out holds files already")
    assert sorted(os.listdir(out)) == ["images", "summary.json", "test.jsonl"]
    assert json.load(open(os.path.join(out, "summary.json")))["benchmark"] == "slake"  # the first run's, untouched
    benchmarks.main(["--bench", "mmmu", "--root", mmmu(str(tmp_path / "mmmu"))[0], "--out", out, "--overwrite"])
    assert sorted(os.listdir(out)) == ["images", "summary.json", "validation.jsonl"]  # replaced, not mixed
    assert len(os.listdir(os.path.join(out, "images"))) == 2
    open(tmp_path / "a_file", "w").write("x")
    convert_fails("--bench", "slake", "--root", root, "--out", str(tmp_path / "a_file"), match=r"is a file: give a folder")
    proot, _, _ = hub_yes_no(str(tmp_path / "pathvqa"), "pathvqa")
    file = os.path.join(proot, "data", "test-00000-of-00001-e5bc3d208bb4deeb.parquet")
    table = pq.read_table(file).to_pylist()
    table[1]["image"] = {"bytes": b"not an image", "path": None}  # after the first image was read
    parquet(file, {k: [r[k] for r in table] for k in table[0]}, {"image": IMAGE})
    convert_fails("--bench", "pathvqa", "--root", proot, "--out", str(tmp_path / "p"),
                  match=r"parquet:2: image: image is not a decodable image")
    assert not os.path.exists(tmp_path / "p") and not os.path.exists(tmp_path / "p.partial")


def test_files_a_spreadsheet_saved_and_files_cut_short_are_named(tmp_path):
    root, expected, _ = slake(str(tmp_path / "slake"))
    text = open(os.path.join(root, "test.json"), encoding="utf-8").read()
    open(os.path.join(root, "test.json"), "w", encoding="utf-16").write(text)
    convert_fails("--bench", "slake", "--root", root, "--out", str(tmp_path / "o"), match=r"test.json: UTF-16 text")
    open(os.path.join(root, "test.json"), "w", encoding="utf-8").write(text[:300])  # a download cut short
    convert_fails("--bench", "slake", "--root", root, "--out", str(tmp_path / "o"), match=r"test.json:1: not valid JSON")
    proot, expected, skipped = pmc_vqa(str(tmp_path / "pmc"))
    rows = list(csv.reader(open(os.path.join(proot, "test_clean.csv"))))
    rows[1][1] += " Café?"
    with open(os.path.join(proot, "test_clean.csv"), "w", newline="", encoding="cp1252") as f:
        csv.writer(f, delimiter=";").writerows(rows)  # a European spreadsheet's CSV
    convert_fails("--bench", "pmc-vqa", "--root", proot, "--out", str(tmp_path / "o"),
                  match=r"test_clean.csv:2: -: not UTF-8 \(byte 0xe9")
    with open(os.path.join(proot, "test_clean.csv"), "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=";").writerows(rows)
    summary = benchmarks.convert("pmc-vqa", proot, str(tmp_path / "semicolons"))
    assert summary["questions"] == len(expected) and summary["skipped"] == skipped
    with open(os.path.join(proot, "test_clean.csv"), "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([r[:-1] for r in rows])  # no Answer_label column
    convert_fails("--bench", "pmc-vqa", "--root", proot, "--out", str(tmp_path / "o"),
                  match=r"1 problem\(s\) in --bench pmc-vqa:\n.*test_clean.csv:1: Answer_label: no such column \(columns: ")


def test_a_root_whose_name_has_brackets(tmp_path):
    root, expected, _ = slake(str(tmp_path / "SLAKE [v1]"))
    assert benchmarks.convert("slake", root, str(tmp_path / "out"))["questions"] == len(expected)


def test_a_split_found_elsewhere_is_named(tmp_path):
    root, _, _ = pmc_vqa(str(tmp_path / "pmc"), "test-2")
    convert_fails("--bench", "pmc-vqa", "--root", root, "--out", str(tmp_path / "o"),
                  match=r"found none of \*\*/test_clean.csv \(here: --split test-2\)")


def test_a_json_lines_file_cut_short_is_named_by_its_line(tmp_path):
    root, _, _ = medxpertqa(str(tmp_path / "MedXpertQA"))
    text = open(os.path.join(root, "MM", "test.jsonl")).read()
    open(os.path.join(root, "MM", "test.jsonl"), "w").write(text[:len(text) - 40])
    convert_fails("--bench", "medxpertqa-mm", "--root", root, "--out", str(tmp_path / "o"),
                  match=r"MM/test.jsonl:2: not valid JSON")
