"""Building a MedAD-style set from labelled images: questions from labels, localization, patient split, manifest.

Imports data.py only (the schema, the image reader and the JSONL writer: what it writes is what training reads).

    python build.py --manifest labels.csv --out my_set --seed 0 --test-frac 0.3   # [--vocab vocab.json]

A manifest (CSV with a header, or JSONL with the same keys) lists one image a row, paths relative to it:
    image,mask,source,modality,anatomy,anomaly,pathology,patient
The builder writes train.jsonl / test.jsonl (split by patient), 8-bit images/ and binary masks/ as the image reader
makes them, and summary.json. Every bad row is reported as `manifest:line: field: problem` before anything is written.
"""
import argparse
import json
import os
from collections import Counter, deque

import numpy as np
from PIL import Image

from data import (ANOMALY_OPTIONS, LETTERS, MAX_ERRORS, REGIONS, TASKS, file_problem, read_image, read_mask, same_text,
                  text_lines, write_jsonl)

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
REGION_WORDS = {"Left Upper": "upper left part", "Right Upper": "upper right part",
                "Left Lower": "lower left part", "Right Lower": "lower right part", "Center Region": "central part"}


# Values that would be a second right answer beside each other without one containing the other ("MRI" and "CE-MRI"
# are caught as words): a finding and the class that covers it, an organ and the region that holds it. Symmetric;
# --vocab adds {"related": {"Tumor": ["Meningioma"]}}.
RELATED = {"Tumor": ["Glioma", "Lymphoma", "Carcinoma", "Melanoma", "Nevus", "Polyp", "Nodule"], "Chest": ["Lung"]}


def related_pairs(extra: dict | None = None) -> set[tuple[str, str]]:
    """Both orders of every related pair (RELATED and `extra`), compared case and spaces aside."""
    pairs = set()
    for table in (RELATED, extra or {}):
        for value, covered in table.items():
            pairs |= {(same_text(value), same_text(c)) for c in covered} | {(same_text(c), same_text(value)) for c in covered}
    return pairs


def also_right(answer: str, value: str, related: set) -> bool:
    """Would `value` be a second right answer beside `answer`? The same value in other case, one holding the other as
    whole words ("MRI" in "CE-MRI", not "CT" in "OCT"), or a related pair ("Glioma" and "Tumor")."""
    a, b = same_text(answer).replace("-", " ").split(), same_text(value).replace("-", " ").split()
    inside = lambda x, y: any(y[i:i + len(x)] == x for i in range(len(y) - len(x) + 1))  # noqa: E731
    return inside(a, b) or inside(b, a) or (same_text(answer), same_text(value)) in related


def make_question(task, answer, choices, rng, deck, shuffle: bool = True, related: set = frozenset()):
    """Four options holding `answer` and three distractors from `choices`, none of which is also right (also_right);
    the answer's letter drawn from a shuffled deck so that each letter is right a quarter of the time. With
    shuffle=False the four keep the order of `choices` (an easier letter mapping; with five values the letters are
    still balanced)."""
    distractors = [c for c in choices if not also_right(answer, c, related)]
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


def questions_for(facts: dict, vocab: dict, rng, decks: dict, cues: dict, shuffle: bool = True,
                  related: set | None = None) -> list[dict]:
    """The five VQA tasks of one image: anatomy, modality and anomaly always; pathology and localization
    when it has a lesion. `vocab` holds each field's values, from which distractors are drawn (never one that is also
    right: `related` pairs, by default RELATED's)."""
    related = related_pairs() if related is None else related
    answers = {"anatomy": facts["anatomy"], "modality": facts["modality"],
               "anomaly": "Abnormal" if facts["anomaly"] else "Normal"}
    if facts.get("pathology"):
        answers["pathology"] = facts["pathology"]
    if facts.get("region"):
        answers["localization"] = facts["region"]
    choices = {**vocab, "anomaly": list(ANOMALY_OPTIONS), "localization": list(REGIONS)}
    out = []
    for task in TASKS:
        if task in answers:
            q = make_question(task, answers[task], choices[task], rng, decks.setdefault(task, []), shuffle, related)
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
    problem = file_problem(os.path.join(folder, row["image"]), read_image)
    if problem:
        return [("image", problem)]
    if str(row.get("mask") or "").strip():
        problem = file_problem(os.path.join(folder, row["mask"]), read_mask)
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
    related, excluded = related_pairs((vocab or {}).get("related")), {}
    for field, pool in pools.items():
        asked = field != "pathology" or any(str(row.get("pathology") or "").strip() for _, row in rows)
        if asked and len(pool) < 4:
            errors.append(f"{manifest}: {field}: only {len(pool)} distinct values ({', '.join(pool)}); four options "
                          f"need at least 4: add rows, give --vocab with more {field} values"
                          + (", or drop --no-builtin-vocab" if not builtin_vocab else ""))
            continue
        for answer in dict.fromkeys(str(row.get(field) or "").strip() for _, row in rows):  # each answer once
            also = [v for v in pool if also_right(answer, v, related) and same_text(v) != same_text(answer)]
            if answer and also:
                excluded.setdefault(field, {})[answer] = also
            if answer and len(pool) - 1 - len(also) < 3:
                errors.append(f"{manifest}: {field}: {answer!r} has {len(pool) - 1 - len(also)} distractors that are not "
                              f"also right ({', '.join(also)} excluded): give --vocab with more {field} values")
    if not rows and not errors:
        errors.append(f"{manifest}: no rows")
    if errors:
        raise ValueError(f"{len(errors)} problem(s) in {manifest}:\n" + "\n".join(errors[:MAX_ERRORS]))
    rng, decks, records = np.random.default_rng(seed), {}, []
    summary = {"images": len(rows), "lesions_without_mask": 0, "distractor_sources": sources,
               "distractors_excluded": excluded}  # per answer, values never offered beside it: they are also right
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
        for q in questions_for(facts, pools, rng, decks, {"anatomy": {}, "modality": {}, "pathology": {}}, related=related):
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="CSV with a header, or JSONL, with the fields "
                   "image, mask, source, modality, anatomy, anomaly, pathology, patient (paths relative to it)")
    p.add_argument("--out", required=True, help="output folder: train.jsonl, test.jsonl, images/, masks/, summary.json")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: %(default)s)")
    p.add_argument("--test-frac", type=float, default=0.3, help="share of images in test.jsonl, split by patient "
                   "(default: %(default)s, the paper's 30%%)")
    p.add_argument("--vocab", help="JSON {field: [values]} adding distractor values for anatomy, modality, pathology "
                   "(to the manifest's own and MedAD-38K's built-in ones), and {\"related\": {value: [values]}}: "
                   "values never offered beside each other, both being right (build.RELATED)")
    p.add_argument("--no-builtin-vocab", action="store_true", help="draw distractors from the manifest and --vocab "
                   "only, not from MedAD-38K's modalities, anatomies and common pathologies")
    args = p.parse_args(argv)
    summary = build(args.manifest, args.out, args.seed, args.test_frac,
                    json.load(open(args.vocab, encoding="utf-8-sig")) if args.vocab else None,
                    builtin_vocab=not args.no_builtin_vocab)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
