"""The public medical VQA benchmarks as downloaded, into the project's JSONL: one table entry a benchmark.

Imports data.py only (the schema, its validation and the JSONL writer).

    python benchmarks.py --bench vqa-rad --root VQA_RAD --out benchmarks/vqa_rad    # then:
    python evaluate.py --ckpt Qwen/Qwen2.5-VL-3B-Instruct sft_out grpo_out --data benchmarks/vqa_rad/test.jsonl --judge sft_out
    python benchmarks.py --bench list                                                # what each reads, keeps, skips

A benchmark is data: its files under --root for each split (globs, one layout per way it is shipped: the authors'
files, the hub's parquet), how they are read (a JSON list, CSV, parquet), which field is the question, the options
(option fields, a Python list held in a string, or a closed question's yes/no), the answer (an option's text, or a
letter), the question type (the rows of Table 1), the benchmark's own question id (kept as `qid`, so predictions
match the source), the image (a path, or bytes in the parquet, written out once), and which records are kept.
Closed yes/no questions become two options in one fixed order, A. yes and B. no, whatever the answer; open questions,
and closed ones answered otherwise, are skipped and counted. An answer is matched to its options case, runs of
spaces, a final period and a letter prefix ("A:", "B.") aside. Every problem is reported as `file:row: field:
problem` before anything is written, or, where the benchmark itself ships such records, skipped and counted by reason
in OUT/summary.json.
"""
import argparse
import ast
import csv
import glob
import hashlib
import io
import json
import os
import re

from data import LETTERS, MAX_ERRORS, record_problems, same_text, write_jsonl

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
        image=dict(path="image_path", under=["../.."]),  # from QA_information/<access>/: the folder holding Images/
        meta=dict(modality=["modality_type", "modality"], source=["dataset"]),
        shipped=("answer", "image"), qid_per_file=True),
    "pmc-vqa": dict(
        about="PMC-VQA: test_clean.csv (the 2,000 verified questions; --split test-all: test.csv, train: train.csv), "
              "columns Figure_path, Question, Answer, 'Choice A'..'Choice D' (cells carry their own 'A:' prefix), "
              "Answer_label; images/<Figure_path> from images.zip. Skipped: rows whose label and answer disagree, or "
              "whose answer matches no choice (the train file ships 31)",
        cite="xmcmic/PMC-VQA dataset card and file list; HEMM's PMC-VQA loader (test_clean.csv, Answer_label)",
        layouts=[dict(read="csv", splits={"test": ["**/test_clean.csv"], "test-all": ["**/test.csv"],
                                          "train": ["**/train.csv"]})],
        question="Question", options=dict(fields=["Choice A", "Choice B", "Choice C", "Choice D"]),
        answer=dict(letter="Answer_label", text="Answer"), type=dict(name="PMC-VQA"),
        image=dict(path="Figure_path", under=["images", "figures"]), shipped=("answer",)),
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
        about="SLAKE: test.json (validation: validate.json, or validation.json on the hub), English questions "
              "(q_lang en) of answer_type CLOSED answered yes or no, as A. yes B. no; content_type Table 1's rows; "
              "images imgs/<img_name>. Skipped: Chinese, open, and closed questions answered otherwise (Left, MRI, ...)",
        cite="Liu et al. 2021; BoKelvin/SLAKE dataset card and file list; openmedlab/Awesome-Medical-Dataset "
             "resources/SLAKE.md",
        layouts=[dict(read="json", splits={"test": ["**/test.json"], "validation": ["**/validate.json",
                                                                                   "**/validation.json"]},
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
}


def describe() -> str:
    """`--bench list`: every benchmark, what it reads, keeps and skips, and where its format comes from."""
    return "\n".join(f"{name}: {b['about']}\n    splits: {', '.join(layout_splits(b))} (default "
                     f"{b.get('default_split', 'test')})\n    format from {b['cite']}" for name, b in BENCHMARKS.items())


def layout_splits(bench: dict) -> list[str]:
    return list(dict.fromkeys(s for layout in bench["layouts"] for s in layout["splits"]))


# ---- reading ----

def read_rows(path: str, kind: str) -> list[dict]:
    """The records of one file: a JSON list of objects, CSV rows (headers stripped of spaces), or parquet rows."""
    if kind == "json":
        rows = json.load(open(path, encoding="utf-8-sig"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of questions, got a {type(rows).__name__}")
        return rows
    if kind == "csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            return [{k.strip(): v for k, v in row.items() if k} for row in csv.DictReader(f)]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit(f"reading {path} needs pyarrow, an optional extra: {PARQUET}") from None
    return pq.read_table(path).to_pylist()


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


def options_of(bench: dict, row: dict) -> list[str]:
    spec = bench["options"]
    if spec.get("yes_no"):
        return list(YES_NO)
    if "listed" in spec:
        return [str(o).strip() for o in ast.literal_eval(field(row, spec["listed"]) or "[]")]
    cells = [(letter, field(row, name)) for letter, name in zip(LETTERS, spec["fields"])]
    # a cell's own prefix ("A:Diffuse uptake pattern") goes when it names its own letter
    return [re.sub(rf"^\s*{letter}\s*:\s*", "", text) for letter, text in cells if text]


def answer_of(bench: dict, row: dict, options: list[str]) -> tuple[str | None, tuple | None]:
    """(the answer's letter, None), or (None, (why in short, the problem in full))."""
    spec, keys = bench["answer"], [plain(o) for o in options]
    text = plain(field(row, spec["text"])) if "text" in spec else None
    by_text = keys.index(text) if text in keys else None
    if "letter" in spec:
        letter = field(row, spec["letter"]).upper()
        if letter not in LETTERS[:len(options)]:
            return None, ("answer not a letter of its options", f"{letter!r} is not a letter of its {len(options)} options")
        if text is not None and by_text != LETTERS.index(letter):
            return None, ("answer label and answer text disagree", f"the label {letter} and the answer "
                          f"{field(row, spec['text'])!r} name different options of {options}")
        return letter, None
    if by_text is None:
        return None, ("answer matches none of its options", f"{field(row, spec['text'])!r} matches none of {options}")
    return LETTERS[by_text], None


def image_of(bench, layout, row, file, out, written) -> tuple[str | None, tuple | None]:
    """(the image's path relative to OUT, None), or (None, (why in short, the problem in full)). Bytes are written out
    once, named by their content; a path is looked up in the folders `under` names, relative to the data file's."""
    spec = layout.get("image", bench.get("image"))
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
    value = field(row, spec["path"])
    under = [os.path.normpath(os.path.join(os.path.dirname(file), u)) for u in spec["under"]]
    for folder in under:
        path = os.path.join(folder, value)
        if value and os.path.isfile(path):
            return os.path.relpath(path, out), None
    return None, ("image not in the download", f"{spec['path']} {value!r}: no such file under {' or '.join(under)}")


# ---- converting ----

def convert(name: str, root: str, out: str, split: str | None = None, limit: int = 0) -> dict:
    """OUT/SPLIT.jsonl (records data.load_jsonl accepts), OUT/images/ (parquet images, once each) and OUT/summary.json
    from a benchmark as downloaded under `root`. ValueError listing every `file:row: field: problem` before anything is
    written, but for records the benchmark itself ships (bench["shipped"]), which are skipped and counted."""
    bench = {**BENCHMARKS[name], "root": os.path.abspath(root)}
    split = split or bench.get("default_split", "test")
    layout = next((lay for lay in bench["layouts"] if split in lay["splits"] and any(
        glob.glob(os.path.join(bench["root"], p), recursive=True) for p in lay["splits"][split])), None)
    if layout is None:
        wanted = " or ".join(p for lay in bench["layouts"] for p in lay["splits"].get(split, []))
        raise ValueError(f"--bench {name} --root {root}: found none of {wanted or f'its files (no split {split!r})'}: "
                         "give as --root the folder the download unpacked into (python benchmarks.py --bench list)")
    files = list(dict.fromkeys(f for p in layout["splits"][split]
                               for f in sorted(glob.glob(os.path.join(bench["root"], p), recursive=True))))
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    keep = {**bench.get("keep", {}), **layout.get("keep", {})}
    records, errors, skipped, seen, written = [], [], {}, {}, {}
    skip = lambda why: skipped.__setitem__(why, skipped.get(why, 0) + 1)  # noqa: E731
    qid_field, type_spec = layout.get("qid", bench.get("qid", "")), layout.get("type", bench.get("type"))
    for file in files:
        rel = os.path.relpath(file, bench["root"]).replace(os.sep, "/")
        for n, row in enumerate(read_rows(file, layout["read"]), 1):
            where = f"{file}:{n}"
            rule = next((k for k, r in keep.items() if not re.search(r[split] if isinstance(r, dict) else r,
                                                                    field(row, k))), None)
            if rule:
                skip("another split" if isinstance(keep[rule], dict) else f"{rule} {field(row, rule)!r}")
                continue
            if "single_image" in bench and (sum(has_image(row.get(k)) for k in bench["single_image"]) != 1 or
                                            "<image" in field(row, bench["options"].get("listed", ""))):
                skip("several images, or images as options")
                continue
            if bench["options"].get("yes_no") and plain(field(row, bench["answer"]["text"])) not in YES_NO:
                skip("open, or closed but answered other than yes or no")
                continue
            options = options_of(bench, row)
            letter, problem = answer_of(bench, row, options)
            image, missing = (None, None) if problem else image_of(bench, layout, row, file, out, written)
            for kind, why in (("answer", problem), ("image", missing)):
                if why and kind in bench.get("shipped", ()):  # records the benchmark itself ships: skipped, counted
                    skip(why[0])
                elif why:
                    errors.append(f"{where}: {kind}: {why[1]}")
            if problem or missing:
                continue
            qid = field(row, qid_field) or f"{rel}:{n}"
            key = f"{os.path.splitext(os.path.basename(file))[0]}/{qid}" if bench.get("qid_per_file") else qid
            if key in seen:
                errors.append(f"{where}: {qid_field or 'row'}: question id {qid!r} again (first at {seen[key]})")
                continue
            seen[key] = where
            task = type_spec.get("name") or (field(row, type_spec["field"]) if "field" in type_spec else
                                             re.search(type_spec["path"], rel).group(1)) or "unknown"
            record = {"id": f"{name}-{key}", "image": image, "task": task, "benchmark": name, "qid": qid, "source": name,
                      "question": re.sub(r"\s*<image 1>\s*", " ", field(row, bench["question"])).strip(),
                      "options": options, "answer": letter}
            record.update({k: v for k, names in bench.get("meta", {}).items() if (v := field(row, names))})
            errors += [f"{where}: {f}: {p}" for f, p in record_problems(record)]
            if not record_problems(record):
                records.append(record)
        if limit and len(records) >= limit:
            records = records[:limit]
            break
    if errors:
        shown = errors[:MAX_ERRORS] + ([f"... and {len(errors) - MAX_ERRORS} more"] if len(errors) > MAX_ERRORS else [])
        raise ValueError(f"{len(errors)} problem(s) in --bench {name} --root {root}:\n" + "\n".join(shown))
    if not records:
        raise ValueError(f"--bench {name} --root {root}: no question kept of {len(files)} file(s) (skipped: {skipped})")
    write_jsonl(os.path.join(out, f"{split}.jsonl"), records)
    summary = {"benchmark": name, "split": split, "root": bench["root"], "files": len(files), "questions": len(records),
               "images_written": len(written), "per_type": dict(sorted(
                   {t: sum(r["task"] == t for r in records) for t in {r["task"] for r in records}}.items())),
               "skipped": skipped, "options": "A. yes, B. no for closed questions" if bench["options"].get("yes_no")
               else "as the benchmark lists them"}
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, help="a benchmark, or 'list' (python benchmarks.py --bench list)")
    p.add_argument("--root", help="the folder the download unpacked into")
    p.add_argument("--out", help="output folder: SPLIT.jsonl, images/ (parquet images), summary.json")
    p.add_argument("--split", help="which split (default: test; MMMU: validation, as its test answers are withheld)")
    p.add_argument("--limit", type=int, default=0, help="keep the first N questions only (0: all)")
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
        summary = convert(args.bench, args.root, args.out, args.split, args.limit)
    except ValueError as e:
        raise SystemExit(f"benchmarks.py: {e}") from None
    print(json.dumps(summary, indent=2))
    print(f"wrote {os.path.join(args.out, summary['split'] + '.jsonl')}: evaluate with python evaluate.py --ckpt ... "
          f"--data {os.path.join(args.out, summary['split'] + '.jsonl')} --judge ...")


if __name__ == "__main__":
    main()
