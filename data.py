"""What training and evaluation read: the MedAD JSONL schema and validation, the image reader, prompt, batching.

Imports nothing from the project, so it can be copied alone into another experiment. The builders of such files
are beside it: `build.py` (from labelled images) and `synth.py` (a synthetic set).

    python data.py check train.jsonl test.jsonl      # validate; every bad line as file:line: field: problem

One JSON object a line; image paths are relative to the JSONL file's folder:
    {"id": ..., "image": "images/x.png", "task": "localization", "question": ..., "options": [4 strings],
     "answer": "B", "cot": ..., "source": ..., "modality": ..., "anatomy": ..., "patient": ..., "mask": ...}
A public benchmark converted by benchmarks.py names itself in `benchmark`: its `task` is then its own question type,
its `options` 2 to 10 strings (letters A, B, ...), and `qid` its own question id.
"""
import argparse
import csv
import io
import json
import os
import re
import shutil

import numpy as np
from PIL import Image

TASKS = ("anatomy", "modality", "anomaly", "pathology", "localization")  # the paper's five diagnostic axes
LETTERS = "ABCDEFGHIJ"  # a MedAD question has four options (A-D); a converted benchmark's up to ten
REGIONS = ("Left Upper", "Right Upper", "Left Lower", "Right Lower", "Center Region")  # Figure 4
ANOMALY_OPTIONS = ("Abnormal", "Normal", "Artifact only", "Indeterminate")  # "Abnormal" is the positive answer
SYSTEM_PROMPT = ("You are a medical imaging expert. First reason step by step about the visual evidence inside "
                 "<think> </think>, then give the letter of the correct option inside <answer> </answer>.")
REQUIRED = {"id": str, "image": str, "task": str, "question": str, "options": list, "answer": str}
OPTIONAL = {"cot": str, "source": str, "modality": str, "anatomy": str, "patient": str, "mask": str, "benchmark": str,
            "qid": str}
MAX_ERRORS = 50
MAX_IMAGE_TOKENS = 1280  # an image of more is resized down (--max-pixels): 1280 x 28 x 28 pixels for Qwen2.5-VL
MAX_PIXELS_HELP = ("larger images are resized down to this many pixels, aspect kept (default: 1,280 image tokens: "
                   "1280 x 28 x 28 for 14-px patches (Qwen2.5-VL), 1280 x 32 x 32 for 16-px ones (Qwen3-VL); a lower "
                   "bound of the checkpoint's processor stays; Gemma 3 resizes every image to one size)")


# ---- loading and validation ----

def same_text(text: str) -> str:
    """A string as options and labels are compared: case and runs of whitespace aside ("Lymph  node" = "lymph node")."""
    return " ".join(text.split()).casefold()


def text_lines(path: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, text) of every line of a UTF-8 file, a byte-order mark allowed (Windows editors and pandas'
    utf-8-sig write one), and (line number, `file:line: -: not UTF-8`) for every line that does not decode."""
    lines, errors = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                lines.append((lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")))
            except UnicodeDecodeError as e:
                errors.append((lineno, f"{path}:{lineno}: -: not UTF-8 (byte {raw[e.start]:#04x} at column "
                                       f"{e.start + 1}, as in cp1252, the encoding of a CSV some spreadsheets save); "
                                       "save the file as UTF-8"))
    return lines, errors


def record_problems(record) -> list[tuple[str, str]]:
    """(field, problem) pairs for one parsed JSONL record, its files aside; empty when it is valid."""
    if not isinstance(record, dict):
        return [("-", "a line must be a JSON object")]
    problems = []
    for field, kind in {**REQUIRED, **OPTIONAL}.items():
        if field not in record:
            if field in REQUIRED:
                problems.append((field, "missing"))
        elif not isinstance(record[field], kind):
            problems.append((field, f"must be a {kind.__name__}, got {type(record[field]).__name__}"))
    if problems:
        return problems
    options, benchmark = record["options"], "benchmark" in record  # a converted benchmark: its own types, 2-10 options
    if not record["task"].strip() if benchmark else record["task"] not in TASKS:
        problems.append(("task", "must not be empty" if benchmark else
                         f"unknown task {record['task']!r}; expected one of {', '.join(TASKS)}"))
    sizes, what = (range(2, len(LETTERS) + 1), "2 to 10") if benchmark else ((4,), "exactly 4")
    if len(options) not in sizes or not all(isinstance(o, str) and o.strip() for o in options):
        problems.append(("options", f"must be {what} non-empty strings"))
    elif len({same_text(o) for o in options}) != len(options):
        problems.append(("options", f"must be {len(options)} distinct options, case and spaces aside: {options}"))
    letters = LETTERS[:len(options)] if len(options) in sizes else LETTERS[:4]
    if record["answer"] not in tuple(letters):
        problems.append(("answer", f"must be one letter of {', '.join(letters)}, got {record['answer']!r}"))
    return problems


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB for the model from any image: 16-bit, 32-bit and float data (CT and MR slices) are windowed to their
    0.5-99.5 percentiles, not clipped at 255; transparent pixels go over black; grey and palette images expand."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        lo, hi = np.percentile(values, [0.5, 99.5])
        values = np.clip((values - lo) / max(hi - lo, 1e-9), 0, 1) * 255
        image = Image.fromarray(values.round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return image.convert("RGB")


def read_image(path: str) -> Image.Image:
    """The image file as the model sees it (to_rgb), decoded whole: a truncated file fails here, not mid-training."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def read_labels(path: str) -> np.ndarray:
    """A mask image's values as a 2D integer array: the largest of its colour channels (a colour mask counts where any
    is), never its alpha channel (an opaque RGBA mask, as some of BUSI's are, would be lesion everywhere)."""
    with Image.open(path) as image:
        bands, values = image.getbands(), np.asarray(image)
    if values.ndim == 3:
        values = values[..., [i for i, band in enumerate(bands) if band != "A"]].max(-1)
    return values.astype(np.int64)


def read_mask(path: str, lesion_labels=None, threshold: int = 1) -> np.ndarray:
    """A lesion mask as a 2D boolean array: the values in `lesion_labels` where given, else any value of at least
    `threshold` (by default any nonzero pixel, of any channel and bit depth; 128 for JPEG masks' noise)."""
    values = read_labels(path)
    return np.isin(values, list(lesion_labels)) if lesion_labels else values >= threshold


def file_problem(path: str, reader) -> str | None:
    if not os.path.isfile(path):
        return f"file not found: {path}"
    try:
        reader(path)
    except Exception as e:  # PIL raises many kinds for a broken file
        return f"not a decodable image: {path} ({type(e).__name__}: {e})"
    return None


def file_problems(files: dict) -> dict:
    """{path: problem} for the files {path: reader} that cannot be read whole; each decoded once, in threads (PIL
    decodes outside the GIL): 10,000 images of 224-512 px in 5-6 s on 2 cores."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        found = dict(zip(files, pool.map(lambda item: file_problem(*item), files.items())))
    return {path: problem for path, problem in found.items() if problem}


def read_text(path: str) -> str:
    """A text file's content (text_lines): another encoding than UTF-8 is an error naming the file and its first line
    that does not decode; a spreadsheet's "Unicode text" is UTF-16, named as such."""
    with open(path, "rb") as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise ValueError(f"{path}: UTF-16 text (a spreadsheet's 'Unicode text'): save it as UTF-8")
    lines, errors = text_lines(path)
    if errors:
        raise ValueError(errors[0][1])
    return "".join(text for _, text in lines)


def read_csv(path: str) -> list[list[str]]:
    """The rows of a CSV file (read_text), its cells separated by commas, or by the semicolons or tabs a spreadsheet
    saves in some locales (read off the header line)."""
    text = read_text(path)
    header = text.split("\n", 1)[0]
    sep = max(",;\t", key=header.count) if header else ","
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=sep))


def read_json(path: str, lines: bool = False):
    """A JSON file's content, or with `lines` the list of a JSON-lines file's values (read_text); invalid JSON is an
    error naming the file, line and column."""
    text = read_text(path)
    values = []
    for n, chunk in [(n, t) for n, t in enumerate(text.splitlines(), 1) if t.strip()] if lines else [(0, text)]:
        try:
            values.append(json.loads(chunk))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n or e.lineno}: not valid JSON ({e.msg} at column {e.colno}): a download cut "
                             "short?") from None
    return values if lines else values[0]


def start_output(out: str, overwrite: bool = False) -> str:
    """The folder a build or conversion writes into, OUT.partial beside OUT: nothing reaches OUT before finish_output,
    so a run stopped by a problem leaves OUT as it was. OUT naming a file, or a folder holding files (an earlier run's)
    without `overwrite`, is an error."""
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file: give a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ValueError(f"--out {out} holds files already ({', '.join(sorted(os.listdir(out))[:4])}, ...): give a new "
                         "or empty folder, or --overwrite to replace them once the run is done")
    staging = out + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def finish_output(staging: str, out: str):
    """OUT replaced by what the run wrote into `staging` (start_output)."""
    out = os.path.abspath(out)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def load_jsonl(path: str) -> list[dict]:
    """Validated records of a MedAD JSONL file; every bad line is reported as `file:line: field: problem`, images
    included (each decoded whole), before anything else happens.

    Each record gains `where` (file:line) and `image_path` (and `mask_path`), resolved against the file's folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    lines, errors = text_lines(path)
    records = []
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append((lineno, f"{path}:{lineno}: -: invalid JSON ({e.msg} at column {e.colno})"))
            continue
        problems = record_problems(record)
        errors += [(lineno, f"{path}:{lineno}: {field}: {problem}") for field, problem in problems]
        if not problems:
            record["where"] = f"{path}:{lineno}"
            record["image_path"] = os.path.join(folder, record["image"])
            if "mask" in record:
                record["mask_path"] = os.path.join(folder, record["mask"])
            records.append((lineno, record))
    files = {r["image_path"]: read_image for _, r in records} | {r["mask_path"]: read_mask for _, r in records if "mask" in r}
    broken = file_problems(files)
    for lineno, r in records:
        errors += [(lineno, f"{path}:{lineno}: {field}: {broken[r[key]]}")
                   for field, key in (("image", "image_path"), ("mask", "mask_path")) if r.get(key) in broken]
    if errors:
        errors = [e for _, e in sorted(errors, key=lambda pair: pair[0])]
        shown = errors[:MAX_ERRORS] + ([f"... and {len(errors) - MAX_ERRORS} more"] if len(errors) > MAX_ERRORS else [])
        raise ValueError(f"{len(errors)} problem(s) in {path}:\n" + "\n".join(shown))
    if not records:
        raise ValueError(f"{path}: no records")
    return [r for _, r in records]


def check_cots(records: list[dict]):
    """SFT's targets must be what R_fmt scores 1 (Eq. 4): every record has a `cot` that is not empty and holds no
    <think>/<answer> tag and no <|...|> special token. Every bad record is reported as `file:line: cot: problem`."""
    errors = []
    for r in records:
        cot = r.get("cot")
        found = [tag for tag in ("<think>", "</think>", "<answer>", "</answer>") if tag in (cot or "")]
        found += re.findall(r"<\|[^|<>\s]+\|>", cot or "")
        problem = ("missing (SFT needs the CoT of every record)" if cot is None else "empty" if not cot.strip() else
                   f"holds {', '.join(found)}: the target <think>cot</think><answer>letter</answer> would not be well "
                   "formed" if found else None)
        if problem:
            errors.append(f"{r['where']}: cot: {problem}")
    if errors:
        shown = errors[:MAX_ERRORS] + ([f"... and {len(errors) - MAX_ERRORS} more"] if len(errors) > MAX_ERRORS else [])
        raise ValueError(f"{len(errors)} record(s) cannot be SFT targets:\n" + "\n".join(shown))


def load_image(record: dict) -> Image.Image:
    """The record's image as the model sees it; an unreadable one is an error naming the JSONL file and line."""
    try:
        return read_image(record["image_path"])
    except Exception as e:  # PIL raises many kinds for a broken file
        raise ValueError(f"{record.get('where', '?')}: image: cannot read {record['image_path']} ({e})") from e


# ---- prompt and batching ----

def format_options(options: list[str]) -> str:
    return "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))


def messages(record: dict) -> list[dict]:
    """The chat of one question: the system instruction, then the image, the question and the options."""
    text = f"{record['question']}\n{format_options(record['options'])}"
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def target(record: dict) -> str:
    """The SFT target and the RL format: the CoT in think tags, then the letter alone in answer tags."""
    return f"<think>{record['cot']}</think><answer>{record['answer']}</answer>"


def limit_pixels(processor, max_pixels: int | None = None):
    """Images larger than max_pixels (default: MAX_IMAGE_TOKENS image tokens, one a patch x merge square: 28x28 pixels
    for Qwen2.5-VL, 32x32 for 16-px patches) are resized down, aspect kept: a 2048x2048 slice would otherwise be
    ~5,300 tokens, prefilled for every one of G samples. The processor's own bound stays when it is lower."""
    images = processor.image_processor
    if "longest_edge" not in images.size:  # a processor that resizes every image to one size (Gemma 3): no bound to set
        return
    max_pixels = max_pixels or MAX_IMAGE_TOKENS * (images.patch_size * images.merge_size) ** 2
    if max_pixels < images.size["shortest_edge"]:
        raise ValueError(f"--max-pixels {max_pixels} is below the processor's smallest image "
                         f"({images.size['shortest_edge']} pixels)")
    images.size["longest_edge"] = min(images.size["longest_edge"], max_pixels)


def prompt_batch(processor, records: list[dict]) -> dict:
    """Processor inputs for a batch of questions, left-padded so generation continues every row at the end. The chat
    template writes every special token itself (Gemma's renders its <bos>): the tokenizer adds none, or a BOS twice."""
    texts = [processor.apply_chat_template(messages(r), add_generation_prompt=True, tokenize=False) for r in records]
    images = [[load_image(r)] for r in records]  # one image a prompt, as every processor takes them
    return dict(processor(text=texts, images=images, padding=True, return_tensors="pt", add_special_tokens=False))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, groups: list | None = None) -> list[list[int]]:
    """The global batches of one epoch over n items: a permutation seeded by the pair (seed, epoch) (numpy's SeedSequence:
    no two pairs share a stream), so that a resumed run sees the same, cut into ceil(n / batch_size) batches of exactly
    batch_size. The last is filled up from the start of the permutation (wrapped): every step has the same size, and
    no rank of a data-parallel run is left without items. With `groups` (a key per item, such as its image) the keys
    are permuted instead, each key's items kept together in their file order."""
    rng = np.random.default_rng([seed, epoch])
    if groups is None:
        order = rng.permutation(n).tolist()
    else:
        members = {}
        for i, key in enumerate(groups):
            members.setdefault(key, []).append(i)
        keys = list(members)
        order = [i for k in rng.permutation(len(keys)) for i in members[keys[k]]]
    steps = -(-n // batch_size)
    wrapped = (order * -(-steps * batch_size // n))[:steps * batch_size]
    return [wrapped[i:i + batch_size] for i in range(0, len(wrapped), batch_size)]


def target_batch(tokenizer, records: list[dict], end_of_turn: str):
    """Target token ids right-padded [B, T] and their mask: the target and the model's end-of-turn token (<|im_end|>
    for Qwen, <end_of_turn> for Gemma: sampler.end_of_turn reads it off the chat template), nothing else.

    The target is tokenized on its own, as generation produces it after the prompt.
    """
    import torch
    rows = [tokenizer(target(r) + end_of_turn, add_special_tokens=False)["input_ids"] for r in records]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def write_jsonl(path: str, records: list[dict]):
    """Write through a temporary file, so that an interrupted write never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate JSONL files and print their task counts")
    c.add_argument("files", nargs="+", help="JSONL files")
    moved = {"synth": "python synth.py --out DIR", "build": "python build.py --manifest labels.csv --out DIR"}
    for name in moved:
        sub.add_parser(name, add_help=False, help=f"moved: {moved[name]}")
    args, _ = p.parse_known_args(argv)
    if args.command in moved:
        raise SystemExit(f"`data.py {args.command}` moved: {moved[args.command]} (see --help there)")
    p.parse_args(argv)
    for path in args.files:
        records = load_jsonl(path)
        counts = {t: sum(r["task"] == t for r in records) for t in TASKS}
        print(f"{path}: {len(records)} valid records; " + ", ".join(f"{t} {n}" for t, n in counts.items()))


if __name__ == "__main__":
    main()
