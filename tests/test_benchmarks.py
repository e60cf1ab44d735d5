"""Each public benchmark on a small fixture in its real format (file names, nesting, keys, column names, the hub's
parquet image struct), converted into records data.load_jsonl accepts: what is kept, how options and answers are
made, what is skipped and why; bad input named by file, row and field before anything is written; a converted
benchmark evaluated end to end with the tiny model and one judge."""
import csv
import io
import json
import os
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


# Each fixture writes the benchmark as downloaded under `root` and returns what the conversion must give:
# {qid: (task, options, answer letter)} of the questions kept, and the skipped counts by reason.
def omnimedvqa(root):
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
        {"answer matches none of its options": 1, "image not in the download": 1}


def pmc_vqa(root):
    picture(os.path.join(root, "images", "PMC1064097_F1.jpg"))
    header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    rows = [["PMC1064097_F1.jpg", "What is the uptake pattern in the breast?", "Focal uptake pattern",
             "A:Diffuse uptake pattern", " B:Focal uptake pattern ", "C:No uptake pattern",
             "D:Cannot determine from the information given", "B"],
            ["PMC1064097_F1.jpg", "Where is the lesion?", "Left breast", "A:Left breast", "B:Right breast",
             "C:Both", "D:Neither", "B"]]  # its label names another choice than its answer
    with open(os.path.join(root, "test_clean.csv"), "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return root, {"test_clean.csv:1": ("PMC-VQA", ["Diffuse uptake pattern", "Focal uptake pattern", "No uptake pattern",
                                                   "Cannot determine from the information given"], "B")}, \
        {"answer label and answer text disagree": 1}


def vqa_rad(root):
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
    return root, {"1": ("PRES", ["yes", "no"], "A"), "2": ("ABN", ["yes", "no"], "B")}, \
        {"another split": 1, "answer_type 'OPEN'": 1, "open, or closed but answered other than yes or no": 1}


def hub_yes_no(root, name):
    """The hub's copy (flaviagiammarino/vqa-rad, flaviagiammarino/path-vqa): image bytes, question, answer, lower-cased."""
    parquet(os.path.join(root, "data", "test-00000-of-00001-e5bc3d208bb4deeb.parquet"),
            {"image": [{"bytes": jpeg(0), "path": None}, {"bytes": jpeg(0), "path": None}, {"bytes": jpeg(1), "path": None}],
             "question": ["is there a mass?", "is the lung normal?", "what organ is this?"],
             "answer": ["yes", "no", "the liver"]}, {"image": IMAGE})
    return root, {f"data/test-00000-of-00001-e5bc3d208bb4deeb.parquet:{n}": ("yes/no", ["yes", "no"], letter)
                  for n, letter in ((1, "A"), (2, "B"))}, {"open, or closed but answered other than yes or no": 1}


def slake(root):
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
                "content_type": "Organ"}], open(os.path.join(root, "test.json"), "w", encoding="utf-8"), ensure_ascii=False)
    return root, {"11934": ("Organ", ["yes", "no"], "A"), "11935": ("Abnormality", ["yes", "no"], "B")}, \
        {"open, or closed but answered other than yes or no": 1, "answer_type 'OPEN'": 1, "q_lang 'zh'": 1}


def mmmu(root):
    none = [None, None, None]
    parquet(os.path.join(root, "Clinical_Medicine", "validation-00000-of-00001.parquet"), {
        "id": ["validation_Clinical_Medicine_1", "validation_Clinical_Medicine_2", "validation_Clinical_Medicine_3"],
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
    return root, {"validation_Clinical_Medicine_1": ("Clinical_Medicine", ["Pneumothorax", "Pleural effusion",
                                                                           "Consolidation", "Normal", "Cardiomegaly"], "B")}, \
        {"several images, or images as options": 1, "question_type 'open'": 1}


FIXTURES = {"omnimedvqa": omnimedvqa, "pmc-vqa": pmc_vqa, "vqa-rad": vqa_rad, "slake": slake, "mmmu": mmmu,
            "pathvqa": lambda root: hub_yes_no(root, "pathvqa")}


def test_every_benchmark_has_a_fixture():
    assert set(FIXTURES) == set(benchmarks.BENCHMARKS)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_a_benchmark_as_downloaded_becomes_records_the_loader_accepts(tmp_path, name):
    root, expected, skipped = FIXTURES[name](str(tmp_path / "download"))
    summary = benchmarks.convert(name, root, str(tmp_path / "out"))
    records = data.load_jsonl(str(tmp_path / "out" / f"{summary['split']}.jsonl"))  # validated, images decoded
    assert {r["qid"]: (r["task"], r["options"], r["answer"]) for r in records} == expected
    assert all(r["benchmark"] == name and r["id"].startswith(f"{name}-") for r in records)
    assert summary["skipped"] == skipped and summary["questions"] == len(expected)
    if name == "mmmu":
        assert records[0]["question"] == "The patient's chest radiograph shows what?"  # the placeholder taken out
    if name == "omnimedvqa":
        assert {r["source"] for r in records} == {"ACRIMA", "Chest CT Scan"} and records[1]["modality"].startswith("CT")


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
    assert "| Model | ABN | Clinical_Medicine | PRES | Overall |" in table  # a benchmark's types, sorted
    predictions = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl", encoding="utf-8")]
    assert {p["qid"] for p in predictions} == {"validation_Clinical_Medicine_1", "1", "2"}
    assert all(p["consistent"] is not None for p in predictions)  # one judge for every row
