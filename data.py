"""MedAD-38K-style data: the JSONL schema and its validation, the prompt, batching, and a synthetic set.

Imports nothing from the project, so it can be copied alone into another experiment.

    python data.py synth --out runs/data --n-images 600 --seed 0     # train.jsonl, test.jsonl, images/, masks/
    python data.py build --manifest labels.csv --out my_set           # the same from your labelled images

One JSON object a line; image paths are relative to the JSONL file's folder:
    {"id": ..., "image": "images/x.png", "task": "localization", "question": ..., "options": [4 strings],
     "answer": "B", "cot": ..., "source": ..., "modality": ..., "anatomy": ..., "patient": ..., "mask": ...}
"""
import argparse
import json
import os
from collections import Counter, deque

import numpy as np
from PIL import Image

TASKS = ("anatomy", "modality", "anomaly", "pathology", "localization")  # the paper's five diagnostic axes
LETTERS = "ABCD"
REGIONS = ("Left Upper", "Right Upper", "Left Lower", "Right Lower", "Center Region")  # Figure 4
SYSTEM_PROMPT = ("You are a medical imaging expert. First reason step by step about the visual evidence inside "
                 "<think> </think>, then give the letter of the correct option inside <answer> </answer>.")
REQUIRED = {"id": str, "image": str, "task": str, "question": str, "options": list, "answer": str}
OPTIONAL = {"cot": str, "source": str, "modality": str, "anatomy": str, "patient": str, "mask": str}
MAX_ERRORS = 50


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
                                       f"{e.start + 1}); save the file as UTF-8"))
    return lines, errors


def _record_problems(record) -> list[tuple[str, str]]:
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
    if record["task"] not in TASKS:
        problems.append(("task", f"unknown task {record['task']!r}; expected one of {', '.join(TASKS)}"))
    options = record["options"]
    if len(options) != 4 or not all(isinstance(o, str) and o.strip() for o in options):
        problems.append(("options", "must be exactly 4 non-empty strings"))
    elif len({same_text(o) for o in options}) != 4:
        problems.append(("options", f"must be 4 distinct options, case and spaces aside: {options}"))
    if record["answer"] not in tuple(LETTERS):
        problems.append(("answer", f"must be one letter of A, B, C, D, got {record['answer']!r}"))
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


def read_mask(path: str) -> np.ndarray:
    """A lesion mask as a 2D boolean array: any nonzero pixel (any channel, any bit depth) is lesion."""
    with Image.open(path) as image:
        values = np.asarray(image)
    return values.any(-1) if values.ndim == 3 else values != 0


def _file_problem(path: str, reader) -> str | None:
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
        found = dict(zip(files, pool.map(lambda item: _file_problem(*item), files.items())))
    return {path: problem for path, problem in found.items() if problem}


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
        problems = _record_problems(record)
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


def prompt_batch(processor, records: list[dict]) -> dict:
    """Processor inputs for a batch of questions, left-padded so generation continues every row at the end."""
    texts = [processor.apply_chat_template(messages(r), add_generation_prompt=True, tokenize=False) for r in records]
    images = [load_image(r) for r in records]
    return dict(processor(text=texts, images=images, padding=True, return_tensors="pt"))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch over n items: a permutation seeded by (seed, epoch), so that a resumed run sees
    the same, cut into ceil(n / batch_size) batches of exactly batch_size. The last is filled up from the start of the
    permutation (wrapped): every step has the same size, and no rank of a data-parallel run is left without items."""
    import torch
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    steps = -(-n // batch_size)
    wrapped = (order * -(-steps * batch_size // n))[:steps * batch_size]
    return [wrapped[i:i + batch_size] for i in range(0, len(wrapped), batch_size)]


def target_batch(tokenizer, records: list[dict], end_of_turn: str = "<|im_end|>"):
    """Target token ids right-padded [B, T] and their mask: the target and its end-of-turn token, nothing else.

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


# ---- lesion localization ----

def _largest_component(mask: np.ndarray) -> np.ndarray:
    """(row, col) coordinates of the largest 8-connected component; the first in scan order on ties."""
    todo = set(zip(*np.nonzero(mask)))
    best = []
    for start in sorted(todo):
        if start not in todo:
            continue
        todo.discard(start)
        component, queue = [start], deque([start])
        while queue:
            r, c = queue.popleft()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (r + dr, c + dc) in todo:
                        todo.discard((r + dr, c + dc))
                        component.append((r + dr, c + dc))
                        queue.append((r + dr, c + dc))
        if len(component) > len(best):
            best = component
    return np.array(best)


def region_of(mask: np.ndarray) -> str:
    """The region (Figure 4) of a lesion mask: where the centroid of its largest 8-connected component lies.

    Center Region when the centroid is in the middle half of both width and height (bounds included),
    else the quadrant holding it. Pixel (r, c) has its centre at x = c + 0.5, y = r + 0.5.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a lesion mask must be 2D, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("empty lesion mask: no pixel is nonzero")
    H, W = mask.shape
    pixels = _largest_component(mask)
    y, x = pixels[:, 0].mean() + 0.5, pixels[:, 1].mean() + 0.5
    if W / 4 <= x <= 3 * W / 4 and H / 4 <= y <= 3 * H / 4:
        return "Center Region"
    return f"{'Left' if x < W / 2 else 'Right'} {'Upper' if y < H / 2 else 'Lower'}"


# ---- building the five VQA tasks ----

QUESTIONS = {  # 10 phrasings per task, as in MedAD-38K
    "anatomy": ["Which anatomical region is shown in this image?", "What body part does this image depict?",
                "Which organ or region is imaged here?", "Identify the anatomy visible in this scan.",
                "What anatomical structure is the focus of this image?", "Which part of the body was imaged?",
                "What is the anatomical site of this image?", "Which organ does this image show?",
                "Name the body region captured in this image.", "What anatomy is represented in this picture?"],
    "modality": ["What imaging modality was used for this image?", "Which modality produced this image?",
                 "How was this image acquired?", "Identify the imaging technique of this scan.",
                 "What type of medical imaging is this?", "Which acquisition modality does this image come from?",
                 "What kind of scan is shown here?", "Name the imaging modality of this picture.",
                 "Which imaging technology generated this image?", "What modality is this medical image?"],
    "anomaly": ["Is there an anomaly in this image?", "Does this image show any abnormality?",
                "Is this image normal or abnormal?", "Can you detect a lesion or anomaly here?",
                "Does the scan contain abnormal findings?", "Is any pathological change visible?",
                "Would you classify this image as normal?", "Is an abnormal region present in this image?",
                "Does this image indicate a disease finding?", "Are there signs of abnormality in this scan?"],
    "pathology": ["What type of lesion is shown?", "Which pathology best describes the finding?",
                  "What is the most likely nature of the abnormality?", "Characterize the lesion in this image.",
                  "Which pathological finding is present?", "What kind of abnormality is visible?",
                  "How would you classify the lesion?", "What is the pathology of the detected anomaly?",
                  "Which diagnosis fits the visible lesion?", "What does the abnormal region most likely represent?"],
    "localization": ["In which region of the image is the lesion located?", "Where is the abnormality in the image?",
                     "Which part of the image contains the lesion?", "Locate the anomaly in this image.",
                     "In which area does the lesion appear?", "Where in the image is the finding?",
                     "Which image region holds the abnormality?", "Where is the lesion positioned?",
                     "Point out the region of the anomaly.", "In what part of the image is the lesion seen?"],
}
ANOMALY_OPTIONS = ["Abnormal", "Normal", "Artifact only", "Indeterminate"]
REGION_WORDS = {"Left Upper": "upper left part", "Right Upper": "upper right part",
                "Left Lower": "lower left part", "Right Lower": "lower right part", "Center Region": "central part"}


def make_question(task, answer, choices, rng, deck, shuffle: bool = True):
    """Four options holding `answer` and three distractors from `choices`; the answer's letter drawn from a
    shuffled deck so that each letter is right a quarter of the time. With shuffle=False the four keep the order
    of `choices` (an easier letter mapping; with five values the letters are still balanced)."""
    distractors = [c for c in choices if same_text(c) != same_text(answer)]  # never the answer in other case
    picked = [distractors[i] for i in rng.permutation(len(distractors))[:3]]
    if shuffle:
        if not deck:
            deck.extend(rng.permutation(4).tolist())
        position = deck.pop()
        options = picked[:position] + [answer] + picked[position:]
    else:
        options = sorted(picked + [answer], key=choices.index)
        position = options.index(answer)
    return {"task": task, "question": QUESTIONS[task][int(rng.integers(10))], "options": options,
            "answer": LETTERS[position]}


def cot_for(task: str, facts: dict, answer: str, cues: dict) -> str:
    """A templated thought that names the visual evidence before it concludes (stands in for the paper's CoT)."""
    anatomy, modality, lesion = facts["anatomy"], facts["modality"], facts.get("pathology")
    seen = {"anatomy": f"The image shows {cues['anatomy'].get(anatomy, 'the outline')} of the {anatomy.lower()}",
            "modality": f"The image has {cues['modality'].get(modality, 'the appearance')} typical of {modality}",
            "anomaly": (f"Inside the {anatomy.lower()} there is {cues['pathology'].get(lesion, 'a focal lesion')} "
                        f"in the {REGION_WORDS.get(facts.get('region'), 'image')}, which is not normal tissue")
            if facts["anomaly"] else f"The {anatomy.lower()} shows uniform tissue without any focal lesion",
            "pathology": f"The lesion is {cues['pathology'].get(lesion, 'a focal lesion')}, the look of a {str(lesion).lower()}",
            "localization": f"The lesion is {cues['pathology'].get(lesion, 'a focal lesion')} and its center lies "
                            f"in the {REGION_WORDS.get(facts.get('region'), 'image')} of the image"}[task]
    return f"{seen}. So the answer is {answer}."


def questions_for(facts: dict, vocab: dict, rng, decks: dict, cues: dict, shuffle: bool = True) -> list[dict]:
    """The five VQA tasks of one image: anatomy, modality and anomaly always; pathology and localization
    when it has a lesion. `vocab` holds each field's values, from which distractors are drawn."""
    answers = {"anatomy": facts["anatomy"], "modality": facts["modality"],
               "anomaly": "Abnormal" if facts["anomaly"] else "Normal"}
    if facts.get("pathology"):
        answers["pathology"] = facts["pathology"]
    if facts.get("region"):
        answers["localization"] = facts["region"]
    choices = {**vocab, "anomaly": ANOMALY_OPTIONS, "localization": list(REGIONS)}
    out = []
    for task in TASKS:
        if task in answers:
            q = make_question(task, answers[task], choices[task], rng, decks.setdefault(task, []), shuffle)
            q["cot"] = cot_for(task, facts, answers[task], cues)
            out.append(q)
    return out


def split_by_patient(records: list[dict], test_frac: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train/test split in which no patient is on both sides (a record without a patient is its own)."""
    groups = {}
    for r in records:
        groups.setdefault(r.get("patient") or r["image"], []).append(r)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_images = {k: len({r["image"] for r in groups[k]}) for k in keys}
    total, test_keys, taken = sum(n_images.values()), set(), 0
    for i in order:  # fill the test side up to test_frac of the images, in random patient order
        if taken + n_images[keys[i]] <= round(test_frac * total):
            test_keys.add(keys[i])
            taken += n_images[keys[i]]
    train = [r for k in keys if k not in test_keys for r in groups[k]]
    test = [r for k in keys if k in test_keys for r in groups[k]]
    return train, test


def write_jsonl(path: str, records: list[dict]):
    """Write through a temporary file, so that an interrupted write never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ---- the synthetic set ----
# Every label is visible: anatomy is the body outline, modality the intensity and texture style, a lesion's
# pathology its shape and brightness, and its region where it lies. A tiny model can learn all five on a CPU.

SYNTH_CUES = {
    "anatomy": {"Brain": "an oval outline", "Chest": "two tall lobes side by side", "Liver": "a wedge-shaped outline",
                "Kidney": "two bean-shaped lobes", "Breast": "a dome-shaped outline"},
    "modality": {"MRI": "smooth gray tissue on a black background", "CT": "gray tissue inside a bright bony rim",
                 "X-ray": "a bluish tint with a vertical shading", "Ultrasound": "grainy speckle in warm tones",
                 "Endoscopy": "pink mucosa with bright highlights"},
    "pathology": {"Tumor": "a bright solid round mass", "Cyst": "a dark round area with a bright rim",
                  "Hemorrhage": "an irregular very bright patch", "Calcification": "a tight cluster of small bright dots",
                  "Infarct": "a dim gray round area"},
}
SYNTH_VOCAB = {field: list(values) for field, values in SYNTH_CUES.items()}


def _disc(H, W, cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r


def _outline(anatomy, H, W, rng):
    yy, xx = np.mgrid[:H, :W] + 0.5
    j = lambda s: 1 + rng.uniform(-s, s)  # noqa: E731  small size jitter
    if anatomy == "Brain":
        return ((yy - H / 2) / (0.46 * H * j(.04))) ** 2 + ((xx - W / 2) / (0.38 * W * j(.04))) ** 2 <= 1
    if anatomy == "Chest":
        lobe = lambda cx: ((yy - H / 2) / (0.45 * H * j(.03))) ** 2 + ((xx - cx) / (0.2 * W * j(.05))) ** 2 <= 1  # noqa: E731
        return lobe(0.27 * W) | lobe(0.73 * W)
    if anatomy == "Liver":
        return (yy > 0.08 * H) & (yy < 0.92 * H) & (xx > 0.05 * W) & (xx - 0.05 * W < (0.95 - 0.35 * yy / H) * W * j(.03))
    if anatomy == "Kidney":
        bean = lambda cx: ((yy - H / 2) / (0.44 * H)) ** 2 + ((xx - cx) / (0.22 * W * j(.05))) ** 2 <= 1  # noqa: E731
        return (bean(0.26 * W) | bean(0.74 * W)) & ~_disc(H, W, H / 2, W / 2, 0.12 * W)
    if anatomy == "Breast":
        return (((yy - 0.95 * H) / (0.9 * H * j(.03))) ** 2 + ((xx - W / 2) / (0.48 * W)) ** 2 <= 1) & (yy > 0.04 * H)
    raise ValueError(f"unknown synthetic anatomy {anatomy!r}")


def _render(body, modality, H, W, rng):
    """An RGB float image in [0, 1] of the body in the modality's style."""
    noise = rng.normal(0, 0.03, (H, W))
    tissue = body * 0.5
    if modality == "MRI":
        gray = tissue + noise
        return np.stack([gray] * 3, -1)
    if modality == "CT":
        rim = body & ~np.roll(np.roll(body, 4, 0), 4, 1) | body & ~np.roll(np.roll(body, -4, 0), -4, 1)
        gray = tissue * 0.8 + rim * 0.5 + 0.08 + noise
        return np.stack([gray] * 3, -1)
    if modality == "X-ray":
        shade = np.linspace(0.7, 1.1, H)[:, None]
        gray = (tissue + 0.15) * shade + noise
        return np.stack([gray * 0.6, gray * 0.8, gray * 1.1], -1)
    if modality == "Ultrasound":
        speckle = tissue * rng.gamma(2.0, 0.5, (H, W))
        return np.stack([speckle * 1.1, speckle * 0.8, speckle * 0.5], -1)
    if modality == "Endoscopy":
        glare = rng.random((H, W)) > 0.995
        gray = tissue + noise
        return np.stack([gray * 1.5 + 0.1, gray * 0.7, gray * 0.8], -1) + glare[..., None] * 0.8
    raise ValueError(f"unknown synthetic modality {modality!r}")


REGION_BOXES = {  # where a lesion's centre is drawn, as fractions of (x, y): well inside its region
    "Left Upper": ((0.14, 0.22), (0.14, 0.22)), "Right Upper": ((0.78, 0.86), (0.14, 0.22)),
    "Left Lower": ((0.14, 0.22), (0.78, 0.86)), "Right Lower": ((0.78, 0.86), (0.78, 0.86)),
    "Center Region": ((0.42, 0.58), (0.42, 0.58))}


def _lesion(pathology, region, H, W, rng):
    """(mask, brightness, rim) of a lesion of this kind centred inside `region`."""
    (x0, x1), (y0, y1) = REGION_BOXES[region]
    cx, cy = rng.uniform(x0, x1) * W, rng.uniform(y0, y1) * H
    r = rng.uniform(0.08, 0.1) * W
    if pathology == "Calcification":  # dots around the centre; the largest one sits on it
        mask = _disc(H, W, cy, cx, 0.035 * W)
        for _ in range(4):
            a = rng.uniform(0, 2 * np.pi)
            mask |= _disc(H, W, cy + np.sin(a) * 0.07 * H, cx + np.cos(a) * 0.07 * W, 0.02 * W)
        return mask, 1.0
    if pathology == "Hemorrhage":
        mask = _disc(H, W, cy, cx, r)
        for _ in range(3):
            mask |= _disc(H, W, cy + rng.uniform(-.4, .4) * r, cx + rng.uniform(-.4, .4) * r, r * 0.7)
        return mask, 1.1
    if pathology in ("Tumor", "Infarct", "Cyst"):
        return _disc(H, W, cy, cx, r), {"Tumor": 0.95, "Infarct": 0.28, "Cyst": 0.0}[pathology]
    raise ValueError(f"unknown synthetic pathology {pathology!r}")


def synth_image(facts: dict, size: int, rng) -> tuple[np.ndarray, np.ndarray | None]:
    """A uint8 RGB image of the facts and, with a lesion, its uint8 mask (255 on the lesion)."""
    H = W = size
    body = _outline(facts["anatomy"], H, W, rng)
    image = _render(body, facts["modality"], H, W, rng)
    mask = None
    if facts["anomaly"]:
        mask, level = _lesion(facts["pathology"], facts["region"], H, W, rng)
        image[mask] = level
        if facts["pathology"] == "Cyst":  # a bright rim around the dark centre
            ring = _disc(H, W, *np.argwhere(mask).mean(0) + 0.5, np.sqrt(mask.sum() / np.pi) + 2.5) & ~mask
            image[ring] = 1.0
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), None if mask is None else mask.astype(np.uint8) * 255


def synth(out: str, n_images: int = 600, seed: int = 0, size: int = 112, test_frac: float = 0.3,
          lesion_frac: float = 0.6, shuffle_options: bool = True) -> dict:
    """Write a synthetic MedAD set to `out`: images/, masks/, train.jsonl, test.jsonl. Same seed, same bytes.
    shuffle_options=False lists every question's options in one fixed order (see make_question)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    records, decks, patient, left_in_patient = [], {}, 0, 0
    for i in range(n_images):
        if left_in_patient == 0:  # a patient has one to three images
            patient, left_in_patient = patient + 1, int(rng.integers(1, 4))
        left_in_patient -= 1
        facts = {"anatomy": SYNTH_VOCAB["anatomy"][rng.integers(5)], "modality": SYNTH_VOCAB["modality"][rng.integers(5)],
                 "anomaly": bool(rng.random() < lesion_frac)}
        if facts["anomaly"]:
            facts["pathology"] = SYNTH_VOCAB["pathology"][rng.integers(5)]
            facts["region"] = REGIONS[rng.integers(5)]
        image, mask = synth_image(facts, size, rng)
        name = f"synth-{i:05d}"
        Image.fromarray(image).save(os.path.join(out, "images", f"{name}.png"))
        meta = {"source": "synthetic", "modality": facts["modality"], "anatomy": facts["anatomy"],
                "patient": f"synth-p{patient:05d}"}
        if mask is not None:
            Image.fromarray(mask).save(os.path.join(out, "masks", f"{name}.png"))
            meta["mask"] = f"masks/{name}.png"
        for q in questions_for(facts, SYNTH_VOCAB, rng, decks, SYNTH_CUES, shuffle_options):
            records.append({"id": f"{name}-{q['task']}", "image": f"images/{name}.png", **q, **meta})
    train, test = split_by_patient(records, test_frac, seed)
    write_jsonl(os.path.join(out, "train.jsonl"), train)
    write_jsonl(os.path.join(out, "test.jsonl"), test)
    return {"images": n_images, "train": len(train), "test": len(test)}


# ---- building a benchmark from labelled images ----

MANIFEST_FIELDS = ("image", "mask", "source", "modality", "anatomy", "anomaly", "pathology", "patient")
YES, NO = {"yes", "true", "1"}, {"no", "false", "0"}
# Distractors for a set with fewer values of its own: MedAD-38K's modalities and anatomies (paper, Section 3.1). The
# paper lists no pathologies; these are findings of the public sets it aggregates (BraTS, LiTS, RESC, BUSI, ISIC, ...).
BUILTIN_VOCAB = {
    "modality": ["MRI", "CT", "OCT", "Ultrasound", "Dermoscopy", "CE-MRI", "Endoscopy", "Fundus", "X-ray", "Microscopy"],
    "anatomy": ["Brain", "Liver", "Retina", "Breast", "Skin", "Lung", "Thyroid", "Alimentary", "Chest", "Lymph Node"],
    "pathology": ["Tumor", "Glioma", "Cyst", "Edema", "Hemorrhage", "Infarct", "Nodule", "Polyp", "Melanoma", "Nevus",
                  "Pneumonia", "Lymphoma", "Carcinoma", "Calcification"],
}


def read_manifest(path: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, row) pairs of a CSV (with a header) or JSONL manifest, and the problems of lines not read."""
    import csv
    lines, bad = text_lines(path)
    errors, rows = [e for _, e in bad], []
    if path.endswith(".jsonl"):
        for n, line in lines:
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError as e:
                errors.append(f"{path}:{n}: -: invalid JSON ({e.msg} at column {e.colno})")
                continue
            if row is not None and not isinstance(row, dict):
                errors.append(f"{path}:{n}: -: a line must be a JSON object")
            elif row is not None:
                rows.append((n, row))
        return rows, errors
    reader = csv.DictReader(text for _, text in lines)
    return [(lines[reader.line_num - 1][0], row) for row in reader], errors  # the line each row ends on


def _row_problems(row: dict, folder: str) -> list[tuple[str, str]]:
    """(field, problem) pairs of one manifest row, its image and mask decoded whole (and not kept)."""
    problems = []
    for field in ("image", "source", "modality", "anatomy", "anomaly"):
        if not str(row.get(field) or "").strip():
            problems.append((field, "missing or empty"))
    unknown = sorted(str(field) for field in set(row) - set(MANIFEST_FIELDS))
    if unknown:
        problems.append((unknown[0], f"unknown field (or a value beyond the header); expected {', '.join(MANIFEST_FIELDS)}"))
    anomaly = str(row.get("anomaly") or "").strip().lower()
    if anomaly and anomaly not in YES | NO:
        problems.append(("anomaly", f"unknown value {row['anomaly']!r}; expected yes/no, true/false or 1/0"))
    if problems:
        return problems
    problem = _file_problem(os.path.join(folder, row["image"]), read_image)
    if problem:
        return [("image", problem)]
    if str(row.get("mask") or "").strip():
        problem = _file_problem(os.path.join(folder, row["mask"]), read_mask)
        if problem:
            return [("mask", problem)]
        mask = read_mask(os.path.join(folder, row["mask"]))
        with Image.open(os.path.join(folder, row["image"])) as im:
            size = im.size
        if mask.shape != size[::-1]:
            problems.append(("mask", f"size {mask.shape[1]}x{mask.shape[0]} differs from the image's {size[0]}x{size[1]}"))
        elif anomaly in YES and not mask.any():
            problems.append(("mask", "empty lesion mask for a row with anomaly = yes"))
        elif anomaly in NO and mask.any():
            problems.append(("mask", "the mask marks a lesion but anomaly = no"))
    return problems


def distractor_pools(rows: list[dict], vocab: dict | None = None, builtin: bool = True) -> tuple[dict, dict]:
    """The values each field's options are drawn from, and where each came from. A field's pool is the manifest's
    values, then --vocab's; MedAD-38K's own (BUILTIN_VOCAB) join for anatomy and modality, and for pathology when it
    has fewer than four. Values that differ only in case or spaces count once (the first spelling is kept)."""
    pools, sources = {}, {}
    for field in ("anatomy", "modality", "pathology"):
        seen, pool, sources[field] = set(), [], {}
        given = [("manifest", [str(r.get(field) or "").strip() for r in rows]), ("--vocab", (vocab or {}).get(field, [])),
                 ("built-in", BUILTIN_VOCAB[field] if builtin else [])]
        for origin, values in given:
            if origin == "built-in" and field == "pathology" and len(pool) >= 4:
                break
            new = [v for v in dict.fromkeys(values) if v and same_text(v) not in seen]
            seen |= {same_text(v) for v in new}
            pool += new
            if new:
                sources[field][origin] = new
        pools[field] = pool
    return pools, sources


def build(manifest: str, out: str, seed: int = 0, test_frac: float = 0.3, vocab: dict | None = None,
          builtin_vocab: bool = True) -> dict:
    """Build train.jsonl / test.jsonl (the five tasks per image) and 8-bit images/ masks/ from a manifest.

    Every bad row is reported as `manifest:line: field: problem`, and nothing is written until all are clean.
    """
    folder = os.path.dirname(os.path.abspath(manifest))
    rows, errors = read_manifest(manifest)
    for line, row in rows:
        errors += [f"{manifest}:{line}: {field}: {problem}" for field, problem in _row_problems(row, folder)]
    pools, sources = distractor_pools([row for _, row in rows], vocab, builtin_vocab)
    for field, pool in pools.items():
        asked = field != "pathology" or any(str(row.get("pathology") or "").strip() for _, row in rows)
        if asked and len(pool) < 4:
            errors.append(f"{manifest}: {field}: only {len(pool)} distinct values ({', '.join(pool)}); four options "
                          f"need at least 4: add rows, give --vocab with more {field} values"
                          + (", or drop --no-builtin-vocab" if not builtin_vocab else ""))
    if not rows and not errors:
        errors.append(f"{manifest}: no rows")
    if errors:
        raise ValueError(f"{len(errors)} problem(s) in {manifest}:\n" + "\n".join(errors[:MAX_ERRORS]))
    rng, decks, records = np.random.default_rng(seed), {}, []
    summary = {"images": len(rows), "lesions_without_mask": 0, "distractor_sources": sources}
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    for i, (line, row) in enumerate(rows):
        name = f"{i:06d}-{os.path.splitext(os.path.basename(row['image']))[0]}"
        read_image(os.path.join(folder, row["image"])).save(os.path.join(out, "images", f"{name}.png"))
        anomaly = str(row["anomaly"]).strip().lower() in YES
        facts = {"anatomy": row["anatomy"].strip(), "modality": row["modality"].strip(), "anomaly": anomaly}
        meta = {"source": row["source"].strip(), "modality": facts["modality"], "anatomy": facts["anatomy"],
                "patient": str(row.get("patient") or "").strip() or name}
        if anomaly and str(row.get("pathology") or "").strip():
            facts["pathology"] = row["pathology"].strip()
        if anomaly and str(row.get("mask") or "").strip():
            mask = read_mask(os.path.join(folder, row["mask"]))
            facts["region"] = region_of(mask)
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(out, "masks", f"{name}.png"))
            meta["mask"] = f"masks/{name}.png"
        elif anomaly:
            summary["lesions_without_mask"] += 1  # no localization question for it
        for q in questions_for(facts, pools, rng, decks, {"anatomy": {}, "modality": {}, "pathology": {}}):
            records.append({"id": f"{name}-{q['task']}", "image": f"images/{name}.png", **q, **meta})
    train, test = split_by_patient(records, test_frac, seed)
    write_jsonl(os.path.join(out, "train.jsonl"), train)
    write_jsonl(os.path.join(out, "test.jsonl"), test)
    count = lambda key: dict(sorted(Counter(r[key] for r in records).items()))  # noqa: E731
    summary.update({"train": len(train), "test": len(test), "questions_per_task": count("task"),
                    "questions_per_source": count("source"), "questions_per_modality": count("modality"),
                    "answer_letters": count("answer")})
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write a synthetic MedAD-style set", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n-images", type=int, default=600, help="number of images (3 or 5 questions each)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    s.add_argument("--size", type=int, default=112, help="image side in pixels")
    s.add_argument("--test-frac", type=float, default=0.3, help="share of images in test.jsonl (split by patient)")
    s.add_argument("--option-order", choices=["shuffled", "fixed"], default="shuffled", help="options in random "
                   "order (as MedAD-38K), or always in one order per task: a letter mapping a tiny model learns in minutes")
    b = sub.add_parser("build", help="build a MedAD-style set from a manifest of labelled images",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--manifest", required=True, help="CSV with a header, or JSONL, with the fields "
                   "image, mask, source, modality, anatomy, anomaly, pathology, patient (paths relative to it)")
    b.add_argument("--out", required=True, help="output folder: train.jsonl, test.jsonl, images/, masks/, summary.json")
    b.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    b.add_argument("--test-frac", type=float, default=0.3, help="share of images in test.jsonl (split by patient)")
    b.add_argument("--vocab", help="JSON {field: [values]} adding distractor values for anatomy, modality, pathology "
                   "(to the manifest's own and MedAD-38K's built-in ones)")
    b.add_argument("--no-builtin-vocab", action="store_true", help="draw distractors from the manifest and --vocab "
                   "only, not from MedAD-38K's modalities, anatomies and common pathologies")
    c = sub.add_parser("check", help="validate JSONL files and print their task counts")
    c.add_argument("files", nargs="+", help="JSONL files")
    args = parser.parse_args()
    if args.command == "synth":
        summary = synth(args.out, args.n_images, args.seed, args.size, args.test_frac,
                        shuffle_options=args.option_order == "shuffled")
        print(f"wrote {args.out}: {summary['images']} images, {summary['train']} train and {summary['test']} test questions")
    elif args.command == "build":
        summary = build(args.manifest, args.out, args.seed, args.test_frac,
                        json.load(open(args.vocab, encoding="utf-8-sig")) if args.vocab else None,
                        builtin_vocab=not args.no_builtin_vocab)
        print(json.dumps(summary, indent=2))
    else:
        for path in args.files:
            records = load_jsonl(path)
            counts = {t: sum(r["task"] == t for r in records) for t in TASKS}
            print(f"{path}: {len(records)} valid records; " + ", ".join(f"{t} {n}" for t, n in counts.items()))


if __name__ == "__main__":
    main()
