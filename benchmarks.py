"""The public medical VQA benchmarks as downloaded, into the project's JSONL: one table entry a benchmark.

Imports data.py only (the schema, its validation and the JSONL writer).

    python benchmarks.py --bench vqa-rad --root VQA_RAD --out benchmarks/vqa_rad    # then:
    python evaluate.py --ckpt Qwen/Qwen2.5-VL-3B-Instruct sft_out grpo_out --data benchmarks/vqa_rad/test.jsonl --judge sft_out
    python benchmarks.py --bench list                                                # what each reads, keeps, skips

A benchmark is data: its files under --root for each split (globs, one layout per way it is shipped: the authors'
files, the hub's parquet; each layout may set its own answer, id, image), how they are read (JSON, JSON lines, CSV,
parquet), the question, the options (option fields, a list in a string, a dict by letter, or a closed question's
yes/no), the answer (an option's text, or a letter), the question type (the rows of Table 1), the benchmark's own
question id (kept as `qid`), the image (a path, or bytes in the parquet, written out once), which records are kept.
Closed yes/no questions become A. yes and B. no, whatever the answer; open ones, and closed ones answered otherwise,
are skipped and counted. An answer is matched to its options case, runs of spaces, a final period and a letter prefix
("A:", "B.") aside; options listed twice that way are merged. A split's files are found once (a hub cache: the
snapshot refs/main names), in one place. Every problem is reported as `file:row: field: problem` before anything
reaches --out, or, where the benchmark itself ships such records, skipped and counted by reason in OUT/summary.json.
"""
import argparse
import ast
import glob
import hashlib
import io
import json
import os
import re
import shutil

from data import (LETTERS, MAX_ERRORS, finish_output, read_csv, read_json, record_problems, same_text, start_output,
                  write_jsonl)

PARQUET = "pip install -r requirements-benchmarks.txt (pyarrow)"
MMMU_MEDICAL = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
                "Public_Health")  # MMMU's Health and Medicine (MMMU-Benchmark/MMMU eval/data_utils.py)
YES_NO = ["yes", "no"]  # a closed question's options, always in this order: the letter never tells the answer
BENCHMARKS = {
    "omnimedvqa": dict(
        about="OmniMedVQA: QA_information/{Open-access,Restricted-access}/<dataset>.json, lists of questions with "
              "option_A..option_D (2 to 4 present), gt_answer (an option's text), question_type (Table 1's rows: "
              "Modality Recognition, Anatomy Identification, Disease Diagnosis, Lesion Grading, Other Biological "
              "Attributes) and image_path under the root (Images/<dataset>/...). Skipped: Restricted-access questions "
              "whose image is not in the download; answers that match none of their options",
        cite="foreverbeliever/OmniMedVQA dataset card; OpenGVLab/Multi-Modality-Arena MedicalEval "
             "medical_datasets.py; alibaba-damo-academy/MedEvalKit utils/OmniMedVQA/OmniMedVQA.py",
        layouts=[dict(read="json", splits={"test": ["**/QA_information/Open-access/*.json",
                                                    "**/QA_information/Restricted-access/*.json"]})],
        question="question", options=dict(fields=["option_A", "option_B", "option_C", "option_D"]),
        answer=dict(text="gt_answer"), type=dict(field="question_type"), qid="question_id",
        # from QA_information/<access>/ the folder holding Images/; only Restricted-access images are documented absent
        image=dict(path="image_path", under=["../.."], absent=r"/Restricted-access/"),
        meta=dict(modality=["modality_type", "modality"], source=["dataset"]), shipped=("answer",), qid_per_file=True),
    "pmc-vqa": dict(
        about="PMC-VQA version 1: test_clean.csv (the 2,000 verified questions; --split test-all: test.csv, train: "
              "train.csv), columns Figure_path, Question, Answer, 'Choice A'..'Choice D' (cells carry their own 'A:' "
              "prefix), Answer_label; images/<Figure_path> from images.zip. Version 2 (noncompound images; MedEvalKit's "
              "test set): --split test-2 (test_2.csv) or train-2 (train_2.csv), columns index, Figure_path, Caption, "
              "Question, 'Choice A'..'Choice D' (' A: Green '), Answer (a letter), split; figures/<Figure_path> from "
              "images_2.zip. Skipped: rows whose label and answer disagree, or whose answer matches no choice (the "
              "train file ships 31)",
        cite="xmcmic/PMC-VQA dataset card and file list (train_2.csv, test_2.csv, images_2.zip); HEMM's PMC-VQA loader "
             "(test_clean.csv, Answer_label); alibaba-damo-academy/MedEvalKit utils/PMC_VQA/PMC_VQA.py (test_2.csv's "
             "ten columns, figures/); lmms-eval medevalkit/pmc_vqa (Answer a letter)",
        layouts=[dict(read="csv", splits={"test": ["**/test_clean.csv"], "test-all": ["**/test.csv"],
                                          "train": ["**/train.csv"]}, answer=dict(letter="Answer_label", text="Answer")),
                 dict(read="csv", splits={"test-2": ["**/test_2.csv"], "train-2": ["**/train_2.csv"]},
                      answer=dict(letter="Answer"), qid="index", image=dict(path="Figure_path", under=["figures"]))],
        question="Question", options=dict(fields=["Choice A", "Choice B", "Choice C", "Choice D"]),
        type=dict(name="PMC-VQA"), image=dict(path="Figure_path", under=["images", "figures"]), shipped=("answer",)),
    "vqa-rad": dict(
        about="VQA-RAD: the authors' 'VQA_RAD Dataset Public.json' (test: phrase_type test_freeform or test_para; "
              "answer_type CLOSED kept, question_type Table 1's rows, images in 'VQA_RAD Image Folder'), or the hub's "
              "data/test-*.parquet (image bytes, question, answer; no type: one row 'yes/no'). Kept: closed questions "
              "answered yes or no, as A. yes B. no; skipped: open ones and closed ones answered otherwise",
        cite="Lau et al. 2018 (OSF 89kps readme: 2,248 questions, 451 test); flaviagiammarino/vqa-rad dataset card and "
             "its processing script",
        layouts=[dict(read="json", splits={"test": ["**/VQA_RAD Dataset Public.json", "**/VQA_RAD Dataset.json"],
                                           "train": ["**/VQA_RAD Dataset Public.json", "**/VQA_RAD Dataset.json"]},
                      keep={"phrase_type": {"test": r"(?i)^test", "train": r"(?i)^(?!test)"}, "answer_type": r"(?i)^closed$"},
                      type=dict(field="question_type"), qid="qid",
                      image=dict(path="image_name", under=["VQA_RAD Image Folder", "VQA_RAD Image folder"])),
                 dict(read="parquet", splits={"test": ["**/test-*.parquet"], "train": ["**/train-*.parquet"]},
                      type=dict(name="yes/no"), image=dict(bytes="image"))],
        question="question", options=dict(yes_no=True), answer=dict(text="answer")),
    "slake": dict(
        about="SLAKE: test.json (validation: validate.json, or validation.json on the hub; train: train.json), English "
              "questions (q_lang en) of answer_type CLOSED answered yes or no, as A. yes B. no; content_type Table 1's "
              "rows; images imgs/<img_name>. Skipped: Chinese, open, and closed questions answered otherwise (Left, "
              "MRI, ...)",
        cite="Liu et al. 2021; BoKelvin/SLAKE dataset card and file list; openmedlab/Awesome-Medical-Dataset "
             "resources/SLAKE.md; xiaoman-zhang/PMC-VQA Slake1.0/ (train.json, validate.json, test.json: 12 fields)",
        layouts=[dict(read="json", splits={"test": ["**/test.json"], "validation": ["**/validate.json",
                                                                                   "**/validation.json"],
                                           "train": ["**/train.json"]},
                      keep={"q_lang": r"^en$", "answer_type": r"(?i)^closed$"})],
        question="question", options=dict(yes_no=True), answer=dict(text="answer"), type=dict(field="content_type"),
        qid="qid", image=dict(path="img_name", under=["imgs"]), meta=dict(modality=["modality"], anatomy=["location"])),
    "pathvqa": dict(
        about="PathVQA: the hub's data/test-*.parquet (image bytes, question, answer), questions answered yes or no "
              "as A. yes B. no (one row 'yes/no'); skipped: the open ones",
        cite="He et al. 2020; flaviagiammarino/path-vqa dataset card (test 6,719)",
        layouts=[dict(read="parquet", splits={"test": ["**/test-*.parquet"], "validation": ["**/validation-*.parquet"],
                                              "train": ["**/train-*.parquet"]})],
        question="question", options=dict(yes_no=True), answer=dict(text="answer"), type=dict(name="yes/no"),
        image=dict(bytes="image")),
    "mmmu": dict(
        about="MMMU's Health and Medicine subjects: <Subject>/validation-*.parquet (or dev), multiple-choice questions "
              "with one image (image_1; its <image 1> placeholder taken out of the question), options a Python list "
              "in a string (up to 9), answer a letter; the subject Table 1's rows. Skipped: open questions, questions "
              "of several images (or images in their options); the test split's answers are withheld",
        cite="MMMU-Benchmark/MMMU README and eval/data_utils.py; the MMMU/MMMU dataset card (columns)",
        layouts=[dict(read="parquet", splits={s: [f"**/{subject}/{s}-*.parquet" for subject in MMMU_MEDICAL]
                                              for s in ("validation", "dev")})],
        keep={"question_type": r"^multiple-choice$"}, default_split="validation",
        question="question", options=dict(listed="options"), answer=dict(letter="answer"),
        type=dict(path=r"(?:^|/)(" + "|".join(MMMU_MEDICAL) + r")/"), qid="id", image=dict(bytes="image_1"),
        single_image=[f"image_{k}" for k in range(1, 8)]),
    "medxpertqa-mm": dict(
        about="MedXpertQA's multimodal subset (MM): MM/test.jsonl (2,000 expert questions; dev: MM/dev.jsonl), each "
              "with options a dict A-E, label a letter, images a list of file names in images/ (images.zip, beside "
              "MM/), question_type (Reasoning, Understanding) Table 1's rows, body_system the anatomy; the choices "
              "written into the question ('Answer Choices: (A) ...') taken out, as they are offered as options. "
              "Skipped: questions of several images (about a fifth): figures on this single-image subset are not "
              "the published ones",
        cite="TsinghuaC3I/MedXpertQA dataset card (configs MM: MM/test.jsonl, MM/dev.jsonl; images.zip) and "
             "eval/data/prepare_medxpertqa.ipynb (options, label, images); alibaba-damo-academy/MedEvalKit "
             "utils/MedXpertQA/MedXpertQA.py (images/<name>, per question_type); Zuo et al. 2025 (arXiv 2501.18362)",
        layouts=[dict(read="jsonl", splits={"test": ["**/MM/test.jsonl"], "dev": ["**/MM/dev.jsonl"]})],
        question="question", drop_text=r"\s*Answer Choices:\s*\(A\).*$", options=dict(letters="options"),
        answer=dict(letter="label"), type=dict(field="question_type"), qid="id",
        image=dict(list="images", under=["../images"]), meta=dict(anatomy=["body_system"])),
}


def describe() -> str:
    """`--bench list`: every benchmark, what it reads, keeps and skips, and where its format comes from."""
    return "\n".join(f"{name}: {b['about']}\n    splits: {', '.join(layout_splits(b))} (default "
                     f"{b.get('default_split', 'test')})\n    format from {b['cite']}" for name, b in BENCHMARKS.items())


def layout_splits(bench: dict) -> list[str]:
    return list(dict.fromkeys(s for layout in bench["layouts"] for s in layout["splits"]))


# ---- reading ----

def find_files(name: str, layout: dict, split: str, root: str) -> tuple[list[str], str | None]:
    """A split's files under root, each found once, and the hub snapshot they come from (None outside a hub cache).
    A folder linked twice (a symlink loop) gives the same file again: kept once. In a Hugging Face cache
    (.../snapshots/<commit>/...) only the snapshot refs/main names is read. Files in two places (a second copy, an
    older snapshot, another benchmark's files under one root) are an error naming both."""
    found = [(f, p) for p in layout["splits"][split]
             for f in sorted(glob.glob(os.path.join(glob.escape(root), p), recursive=True), key=lambda f: (f.count("/"), f))]
    snapshot = None
    for f, _ in found:  # a hub cache under root: <repo>/refs/main, <repo>/snapshots/<commit>/...
        cache = re.search(r"^(.*?)/?snapshots/[^/]+/", os.path.relpath(f, root).replace(os.sep, "/"))
        if cache and os.path.isfile(os.path.join(root, cache.group(1), "refs", "main")):
            snapshot = open(os.path.join(root, cache.group(1), "refs", "main")).read().strip()
    if snapshot:  # before the links are followed: two snapshots' files may be links to one blob
        found = [(f, p) for f, p in found if f"/snapshots/{snapshot}/" in f or "snapshots/" not in os.path.relpath(f, root)]
    real = {}
    found = [(f, p) for f, p in found if real.setdefault(os.path.realpath(f), f) == f]
    places = {}  # the folder `**` matched, per file: one for every file of a split
    for f, pattern in found:
        rel = os.path.relpath(f, root).replace(os.sep, "/").split("/")
        places.setdefault("/".join(rel[:len(rel) - pattern.count("/")]) or ".", f)
    if len(places) > 1:
        (a, fa), (b, fb) = list(places.items())[:2]
        raise ValueError(f"--bench {name} --root {root}: its {split} files are in two places, {fa} and {fb} (a second "
                         "copy, another snapshot, or another benchmark's files): give as --root the folder of one")
    return sorted(dict.fromkeys(f for f, _ in found)), snapshot


def read_rows(path: str, kind: str) -> tuple[list[dict], list[str] | None]:
    """The records of one file (a JSON list of objects, JSON lines, CSV rows or parquet rows) and, for a CSV, its
    columns (headers stripped of spaces). Errors name the file and line."""
    if kind in ("json", "jsonl"):
        rows = read_json(path, lines=kind == "jsonl")
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of questions, got a {type(rows).__name__}")
        return rows, None
    if kind == "csv":
        table = read_csv(path)
        header = [h.strip() for h in table[0]] if table else []
        return [dict(zip(header, cells)) for cells in table[1:] if any(c.strip() for c in cells)], header
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit(f"reading {path} needs pyarrow, an optional extra: {PARQUET}") from None
    return pq.read_table(path).to_pylist(), None


def field(row: dict, names) -> str:
    """The first of `names` the row holds, as a stripped string ('' when none)."""
    for name in [names] if isinstance(names, str) else names:
        if row.get(name) is not None and str(row[name]).strip():
            return str(row[name]).strip()
    return ""


def plain(text: str) -> str:
    """An option or answer as matched: case and runs of spaces aside, a letter prefix ('A:', 'B.') and a final period
    taken off."""
    return same_text(re.sub(r"^\s*\(?[A-J]\s*[:.)]\s*", "", str(text))).rstrip(".").strip()


def has_image(cell) -> bool:
    """Does a parquet image cell ({bytes, path}) hold an image? An unused one is None, or a struct without bytes."""
    return isinstance(cell, dict) and bool(cell.get("bytes"))


def columns_read(b: dict) -> list[str]:
    """The columns a CSV benchmark reads: each must be in the file's header."""
    return [c for c in [b["question"], *b["options"].get("fields", []), *b["answer"].values(), b["image"].get("path"),
                        b.get("qid")] if c]


def several_images(b: dict, row: dict) -> bool:
    """Does a question show more than one image (or images as its options)? The schema takes one."""
    if "single_image" in b:
        return (sum(has_image(row.get(k)) for k in b["single_image"]) != 1 or
                "<image" in field(row, b["options"].get("listed", "")))
    return "list" in b["image"] and len(row.get(b["image"]["list"]) or []) != 1


def options_of(b: dict, row: dict) -> list[str]:
    spec = b["options"]
    if spec.get("yes_no"):
        return list(YES_NO)
    if "listed" in spec:
        return [str(o).strip() for o in ast.literal_eval(field(row, spec["listed"]) or "[]")]
    if "letters" in spec:  # {"A": text, "B": text, ...}
        return [str(text).strip() for _, text in sorted((row.get(spec["letters"]) or {}).items())]
    cells = [(letter, field(row, name)) for letter, name in zip(LETTERS, spec["fields"])]
    # a cell's own prefix ("A:Diffuse uptake pattern") goes when it names its own letter
    return [re.sub(rf"^\s*{letter}\s*:\s*", "", text) for letter, text in cells if text]


def answer_of(b: dict, row: dict, options: list[str]) -> tuple[str | None, tuple | None]:
    """(the answer's letter, None), or (None, (why in short, the problem in full)). Options listed twice (case and
    spaces aside) count once: a letter names the first."""
    spec, keys = b["answer"], [plain(o) for o in options]
    text = plain(field(row, spec["text"])) if "text" in spec else None
    by_text = keys.index(text) if text in keys else None
    if "letter" in spec:
        letter = field(row, spec["letter"]).upper()
        if letter not in LETTERS[:len(options)]:
            return None, ("answer not a letter of its options", f"{letter!r} is not a letter of its {len(options)} options")
        if text is not None and by_text != keys.index(keys[LETTERS.index(letter)]):
            return None, ("answer label and answer text disagree", f"the label {letter} and the answer "
                          f"{field(row, spec['text'])!r} name different options of {options}")
        return letter, None
    if by_text is None:
        return None, ("answer matches none of its options", f"{field(row, spec['text'])!r} matches none of {options}")
    return LETTERS[by_text], None


def merge_twins(options: list[str], letter: str) -> tuple[list[str] | None, str | None]:
    """Options listed twice, case and spaces aside, merged into one (MMMU's validation_Basic_Medical_Science_1 lists
    'Eosinophilic granular body' as D and E), the answer's letter moved with its text; (None, None) when the answer
    is one of the twins: which of them is meant cannot be told."""
    keys = [plain(o) for o in options]
    answer = keys[LETTERS.index(letter)]
    if keys.count(answer) > 1:
        return None, None
    keep = [i for i, k in enumerate(keys) if keys.index(k) == i]
    return [options[i] for i in keep], LETTERS[keep.index(LETTERS.index(letter))]


def image_of(b, row, file, out, written) -> tuple[str | None, tuple | None]:
    """(the image's path relative to OUT, None), or (None, (why in short, the problem in full)). Bytes are written out
    once, named by their content; a path is looked up in the folders `under` names, relative to the data file's."""
    spec = b["image"]
    if "bytes" in spec:
        cell = row.get(spec["bytes"]) or {}
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            return None, ("no image", f"{spec['bytes']} holds no image bytes")
        digest = hashlib.sha1(data).hexdigest()[:20]
        if digest not in written:
            from PIL import Image
            try:
                kind = Image.open(io.BytesIO(data)).format.lower()
            except Exception as e:  # PIL raises many kinds for bad bytes
                return None, ("image not decodable", f"{spec['bytes']} is not a decodable image ({type(e).__name__})")
            name = f"images/{digest}.{'jpg' if kind == 'jpeg' else kind}"
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
            written[digest] = name
        return written[digest], None
    value = str((row.get(spec["list"]) or [""])[0]).strip() if "list" in spec else field(row, spec["path"])
    under = [os.path.normpath(os.path.join(os.path.dirname(file), u)) for u in spec["under"]]
    for folder in under:
        path = os.path.join(folder, value)
        if value and os.path.isfile(path):
            return os.path.relpath(path, out), None
    if re.search(spec.get("absent", r"$^"), file.replace(os.sep, "/")):
        return None, ("image not shipped (a restricted-access source's: in the original dataset only)", None)
    return None, ("image not in the download", f"{spec.get('path') or spec['list']} {value!r}: no such file under "
                  f"{' or '.join(under)}")


# ---- converting ----

def convert(name: str, root: str, out: str, split: str | None = None, limit: int = 0, overwrite: bool = False) -> dict:
    """OUT/SPLIT.jsonl (records data.load_jsonl accepts), OUT/images/ (parquet images, once each) and OUT/summary.json
    from a benchmark as downloaded under `root`. ValueError listing every `file:row: field: problem` before anything
    reaches OUT (written into OUT.partial, moved into place at the end), but for records the benchmark itself ships
    (bench["shipped"], images documented absent, options listed twice), which are skipped or merged and counted."""
    if limit < 0:
        raise ValueError(f"--limit {limit}: give 0 (every question) or a number of questions to keep")
    bench, root = BENCHMARKS[name], os.path.abspath(root)
    split = split or bench.get("default_split", "test")
    layouts = [lay for lay in bench["layouts"] if split in lay["splits"]]
    if not layouts:
        raise ValueError(f"--bench {name}: no split {split!r}; its splits: {', '.join(layout_splits(bench))}")
    found = [(lay, find_files(name, lay, split, root)) for lay in layouts]
    layout, (files, snapshot) = next(((lay, hit) for lay, hit in found if hit[0]), (None, ([], None)))
    if layout is None:
        here = [s for s in layout_splits(bench) if s != split and any(glob.glob(os.path.join(glob.escape(root), p),
                recursive=True) for lay in bench["layouts"] for p in lay["splits"].get(s, []))]
        raise ValueError(f"--bench {name} --root {root}: found none of "
                         f"{' or '.join(p for lay in layouts for p in lay['splits'][split])}"
                         + (f" (here: --split {' or '.join(here)})" if here else ": give as --root the folder the "
                            "download unpacked into (python benchmarks.py --bench list)"))
    if (root + os.sep).startswith(os.path.abspath(out) + os.sep):
        raise ValueError(f"--out {out} holds the download (--root {root}): give an output folder of its own")
    b = {**bench, **layout, "keep": {**bench.get("keep", {}), **layout.get("keep", {})}}
    partial = start_output(out, overwrite)
    try:
        summary = _convert(name, b, split, root, files, partial, limit)
        summary.update(root=root, **({"hub_snapshot": snapshot} if snapshot else {}))
        json.dump(summary, open(os.path.join(partial, "summary.json"), "w"), indent=2)
        finish_output(partial, out)
        return summary
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _convert(name: str, b: dict, split: str, root: str, files: list[str], out: str, limit: int) -> dict:
    os.makedirs(os.path.join(out, "images"))
    records, errors, skipped, seen, written, merged = [], [], {}, {}, {}, 0
    skip = lambda why: skipped.__setitem__(why, skipped.get(why, 0) + 1)  # noqa: E731
    for file in files:
        rel = os.path.relpath(file, root).replace(os.sep, "/")
        rows, header = read_rows(file, b["read"])
        missing = [c for c in columns_read(b) if header is not None and c not in header]
        if missing:
            errors.append(f"{file}:1: {missing[0]}: no such column (columns: {', '.join(header)})")
            continue
        for n, row in enumerate(rows, 1):
            if limit and len(records) >= limit:
                break
            where = f"{file}:{n}"
            rule = next((k for k, r in b["keep"].items() if not re.search(r[split] if isinstance(r, dict) else r,
                                                                         field(row, k))), None)
            if rule:
                skip("another split" if isinstance(b["keep"][rule], dict) else f"{rule} {field(row, rule)!r}")
                continue
            if several_images(b, row):
                skip("several images, or images as options")
                continue
            if b["options"].get("yes_no") and plain(field(row, b["answer"]["text"])) not in YES_NO:
                skip("open, or closed but answered other than yes or no")
                continue
            options = options_of(b, row)
            listed = len(options)
            letter, problem = answer_of(b, row, options)
            if not problem and len({plain(o) for o in options}) < len(options):
                options, letter = merge_twins(options, letter)
                if options is None:
                    skip("its answer is an option listed twice")
                    continue
            image, missing = (None, None) if problem else image_of(b, row, file, out, written)
            for kind, why in (("answer", problem), ("image", missing)):
                if why and (kind in b.get("shipped", ()) or why[1] is None):  # the benchmark ships it: skipped, counted
                    skip(why[0])
                elif why:
                    errors.append(f"{where}: {kind}: {why[1]}")
            if problem or missing:
                continue
            qid = field(row, b.get("qid", "")) or f"{rel}:{n}"
            key = f"{os.path.splitext(os.path.basename(file))[0]}/{qid}" if b.get("qid_per_file") else qid
            if key in seen:
                errors.append(f"{where}: {b.get('qid') or 'row'}: question id {qid!r} again (first at {seen[key]})")
                continue
            seen[key] = where
            spec = b["type"]
            task = spec.get("name") or (field(row, spec["field"]) if "field" in spec else
                                        re.search(spec["path"], rel).group(1)) or "unknown"
            question = re.sub(r"\s*<image 1>\s*", " ", field(row, b["question"]))
            record = {"id": f"{name}-{key}", "image": image, "task": task, "benchmark": name, "qid": qid, "source": name,
                      "question": re.sub(b.get("drop_text", r"$^"), "", question, flags=re.S).strip(),
                      "options": options, "answer": letter}
            record.update({k: v for k, names in b.get("meta", {}).items() if (v := field(row, names))})
            errors += [f"{where}: {f}: {p}" for f, p in record_problems(record)]
            if not record_problems(record):
                records.append(record)
                merged += len(options) < listed
        if limit and len(records) >= limit:
            break
    if errors:
        shown = errors[:MAX_ERRORS] + ([f"... and {len(errors) - MAX_ERRORS} more"] if len(errors) > MAX_ERRORS else [])
        raise ValueError(f"{len(errors)} problem(s) in --bench {name}:\n" + "\n".join(shown))
    if not records:
        raise ValueError(f"--bench {name}: no question kept of {len(files)} file(s) (skipped: {skipped})")
    write_jsonl(os.path.join(out, f"{split}.jsonl"), records)
    return {"benchmark": name, "split": split, "files": len(files), "questions": len(records),
            "images_written": len(written), "per_type": dict(sorted(
                {t: sum(r["task"] == t for r in records) for t in {r["task"] for r in records}}.items())),
            "skipped": skipped, "options_merged": merged, **({"limit": limit} if limit else {}),
            "options": "A. yes, B. no for closed questions" if b["options"].get("yes_no") else "as the benchmark lists them"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, help="a benchmark, or 'list' (python benchmarks.py --bench list)")
    p.add_argument("--root", help="the folder the download unpacked into")
    p.add_argument("--out", help="output folder: SPLIT.jsonl, images/ (parquet images), summary.json (a new or empty "
                   "one; nothing reaches it before every problem is known)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (an earlier conversion) once "
                   "this one is done")
    p.add_argument("--split", help="which split (default: test; MMMU: validation, as its test answers are withheld; "
                   "--bench list names each benchmark's splits)")
    p.add_argument("--limit", type=int, default=0, help="keep the first N questions only (default 0: all)")
    args = p.parse_args(argv)
    if args.bench == "list":
        print(describe())
        return
    if args.bench not in BENCHMARKS:
        raise SystemExit(f"benchmarks.py: unknown benchmark {args.bench!r}; python benchmarks.py --bench list says "
                         f"which exist ({', '.join(BENCHMARKS)})")
    if not args.root or not args.out:
        raise SystemExit("benchmarks.py: give --root (the download) and --out")
    try:
        summary = convert(args.bench, args.root, args.out, args.split, args.limit, args.overwrite)
    except ValueError as e:
        raise SystemExit(f"benchmarks.py: {e}") from None
    print(json.dumps(summary, indent=2))
    print(f"wrote {os.path.join(args.out, summary['split'] + '.jsonl')}: evaluate with python evaluate.py --ckpt ... "
          f"--data {os.path.join(args.out, summary['split'] + '.jsonl')} --judge ...")


if __name__ == "__main__":
    main()
