"""Building a MedAD-style set from labelled data: a manifest of 2D images and CT/MR volumes, and public sources as
downloaded (recipes.py), into the JSONL training reads.

Imports data.py, questions.py (the five questions), volumes.py (slicing volumes) and recipes.py (the sources).

    python build.py --manifest labels.csv --out my_set --seed 0 --test-frac 0.3   # [--vocab vocab.json]
    python build.py --recipe brats2021 --root BraTS2021 --recipe lits --root LiTS --out medad_like
    python build.py --recipe list                                                 # the sources and their layouts

A manifest (CSV with a header, or JSONL with the same keys) lists one image or volume a row, paths relative to it:
    image,mask,source,modality,anatomy,anomaly,pathology,patient[,lesion_labels,label_pathology,window,mask_threshold]
A volume (.nii, .nii.gz, .nrrd, .mha, .mhd, or a folder of one DICOM series) with its label volume becomes axial
slices shown the radiological way (volumes.py). The builder writes train.jsonl / test.jsonl (split by patient), 8-bit
images/ and binary masks/ as the image reader makes them, and summary.json. Every bad row is reported as
`manifest:line: field: problem` (a recipe's by the image it found) before anything is written.
"""
import argparse
import json
import os
import shutil
import time
from collections import Counter

import numpy as np
from PIL import Image

import recipes
import volumes
from data import (MAX_ERRORS, file_problem, finish_output, read_image, read_labels, read_mask, same_text, start_output,
                  text_lines, write_jsonl)
from questions import also_right, questions_for, region_of, related_pairs, split_by_patient

MANIFEST_FIELDS = ("image", "mask", "source", "modality", "anatomy", "anomaly", "pathology", "patient",
                   "lesion_labels", "label_pathology", "window", "mask_threshold")  # the last four optional
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


def _paths(folder: str, value) -> list[str]:
    """The files a manifest cell names: one path, or several joined by '|' (one mask drawn in several files)."""
    return [os.path.join(folder, p.strip()) for p in str(value or "").split("|") if p.strip()]


def lesion_of(paths: list[str], row: dict) -> tuple[np.ndarray, int | None]:
    """A 2D row's lesion mask (its mask files together, by its lesion_labels or mask_threshold) and the label value
    most frequent on it (for label_pathology; None when there is none)."""
    labels, threshold = recipes.lesion_rule(row)
    values = [read_labels(p) for p in paths]
    masks = [np.isin(v, labels) if labels else v >= threshold for v in values]
    lesion = np.logical_or.reduce(masks)
    on = np.concatenate([v[m] for v, m in zip(values, masks)])
    return lesion, int(np.bincount(on).argmax()) if labels and on.size else None


def label_names(row: dict) -> dict:
    """{label value: pathology} of a row's label_pathology ("1=Necrosis,2=Edema")."""
    pairs = [p.split("=", 1) for p in str(row.get("label_pathology") or "").split(",") if p.strip()]
    return {int(k): v.strip() for k, v in pairs}


def _row_problems(row: dict, folder: str) -> list[tuple[str, str]]:
    """(field, problem) pairs of one manifest row: its fields, and a 2D image and mask decoded whole (and not kept); a
    volume is read when it is sliced."""
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
    for field, check in (("lesion_labels", recipes.lesion_rule), ("label_pathology", label_names),
                         ("window", lambda r: _window(r) or 0)):
        try:
            check(row)
        except ValueError:
            problems.append((field, f"cannot read {row[field]!r}: lesion_labels 1,2,4; label_pathology 1=Edema,2=Tumor; "
                                    "window centre,width"))
    if problems:
        return problems
    image, masks = os.path.join(folder, row["image"]), _paths(folder, row.get("mask"))
    if volumes.is_volume(image):
        volumes.simpleitk()  # the optional extra, or a SystemExit naming its pip command
        missing = [p for p in [image, *masks] if not os.path.exists(p)]
        return [("image" if missing[0] == image else "mask", f"file not found: {missing[0]}")] if missing else []
    problem = file_problem(image, read_image)
    if problem:
        return [("image", problem)]
    for path in masks:
        problem = file_problem(path, read_mask)
        if problem:
            return [("mask", problem)]
    if masks:
        lesion, _ = lesion_of(masks, row)
        with Image.open(image) as im:
            size = im.size
        if lesion.shape != size[::-1]:
            problems.append(("mask", f"size {lesion.shape[1]}x{lesion.shape[0]} differs from the image's {size[0]}x{size[1]}"))
        elif anomaly in YES and not lesion.any():
            problems.append(("mask", "empty lesion mask for a row with anomaly = yes" +
                             (" (no pixel has one of its lesion_labels)" if row.get("lesion_labels") else "")))
        elif anomaly in NO and lesion.any():
            problems.append(("mask", "the mask marks a lesion but anomaly = no"))
    return problems


def _window(row: dict) -> tuple[float, float] | None:
    """A row's CT window override (centre, width), or None."""
    text = str(row.get("window") or "").strip()
    if not text:
        return None
    centre, width = (float(v) for v in text.split(","))
    return centre, width


def split_counts(train: list[dict], test: list[dict]) -> dict:
    """Per source and side, how many patients, images and questions."""
    return {source: {side: {"patients": len({r["patient"] for r in rs if r["source"] == source}),
                            "images": len({r["image"] for r in rs if r["source"] == source}),
                            "questions": sum(r["source"] == source for r in rs)}
                     for side, rs in (("train", train), ("test", test))}
            for source in sorted({r["source"] for r in train + test})}


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


def gather(manifest: str | None, sources: list[tuple[str, str]], staging: str, defaults: dict):
    """Every row to build, as (where, folder, row): a manifest's (where = manifest:line) and each recipe's (where = the
    image it found), with `defaults` (the command line's lesion labels, label names, window) where a row sets none;
    the problems of lines not read; what each recipe dropped, by reason."""
    rows, errors, dropped = [], [], {}
    if manifest:
        lines, errors = read_manifest(manifest)
        folder = os.path.dirname(os.path.abspath(manifest))
        rows = [(f"{manifest}:{line}", folder, row) for line, row in lines]
    for name, root in sources:
        try:
            found, dropped[name] = recipes.rows(name, root, staging)
        except ValueError as e:
            errors.append(f"--recipe {name} --root {root}: {e}")
            continue
        rows += [(f"--recipe {name}: {row['image']}", root, row) for row in found]
    for _, _, row in rows:
        for field, value in defaults.items():
            if value and not str(row.get(field) or "").strip():
                row[field] = value
    return rows, errors, dropped


def slice_volumes(rows: list, staging: str, more: int, normal: int) -> tuple[list, list, dict]:
    """Volume rows become rows of axial slices (PNG in `staging`), one volume in memory at a time; 2D rows stay. A
    volume whose mask holds none of its lesion labels gives normal slices (LiTS's tumour-free livers); lesion labels
    that match nothing in any volume of a manifest or recipe are an error, named once for it."""
    from tqdm import tqdm
    out, errors, seconds, found = [], [], [], {}
    todo = [item for item in rows if volumes.is_volume(os.path.join(item[1], item[2]["image"]))]
    for where, folder, row in tqdm(todo, desc="volumes", disable=not todo, dynamic_ncols=True):
        start, image = time.time(), os.path.join(folder, row["image"])
        masks, wanted = _paths(folder, row.get("mask")), recipes.lesion_rule(row)[0]
        try:
            cut, present = volumes.slices(image, masks[0] if masks else None, modality=row["modality"],
                                          anatomy=row["anatomy"], lesion_labels=wanted, window_override=_window(row),
                                          more=more, normal=normal)
        except ValueError as e:
            errors.append(f"{where}: {'mask' if masks and masks[0] in str(e) else 'image'}: {e}")
            continue
        if masks and wanted:  # per manifest or recipe: the labels asked for, the labels seen, whether any matched
            group = found.setdefault(where.split(": ")[0] if where.startswith("--recipe") else where.rsplit(":", 1)[0],
                                     {"wanted": set(), "seen": set(), "volumes": 0, "matched": False})
            group.update(volumes=group["volumes"] + 1, matched=group["matched"] or bool(set(present) & set(wanted)))
            group["wanted"] |= set(wanted)
            group["seen"] |= set(present)
        stem = os.path.basename(image.rstrip("/")).split(".")[0]
        for s in cut:
            name = f"{len(out):06d}-{stem}-z{s['z']:03d}"
            Image.fromarray(s["pixels"]).save(os.path.join(staging, f"{name}.png"))
            piece = {**row, "image": f"{name}.png", "anomaly": "yes" if s["lesion"] is not None else "no",
                     "patient": str(row.get("patient") or "").strip() or stem}
            piece.pop("mask", None)
            if s["lesion"] is not None:
                Image.fromarray(s["lesion"].astype(np.uint8) * 255).save(os.path.join(staging, f"{name}-mask.png"))
                piece.update(mask=f"{name}-mask.png", lesion_labels="", mask_threshold="")
                piece["pathology"] = label_names(row).get(s["label"], row.get("pathology"))
            else:
                piece.pop("pathology", None)
            out.append((f"{where} (slice {s['z']})", staging, piece))
        seconds.append(time.time() - start)
    stats = {"volumes": len(seconds), "slices": len(out),
             "seconds_per_volume": round(float(np.mean(seconds)), 2) if seconds else None}
    errors += [f"{group}: lesion_labels: {sorted(g['wanted'])} match nothing in any of its {g['volumes']} label volumes, "
               f"whose labels are {sorted(g['seen'])}: give the lesion's values (--lesion-labels or a lesion_labels column)"
               for group, g in found.items() if not g["matched"]]
    return [item for item in rows if not volumes.is_volume(os.path.join(item[1], item[2]["image"]))] + out, errors, stats


def build(manifest: str | None, out: str, seed: int = 0, test_frac: float = 0.3, vocab: dict | None = None,
          builtin_vocab: bool = True, sources: list[tuple[str, str]] = (), lesion_labels: str = "",
          label_pathology: str = "", window: str = "", slices_per_volume: int = 2, normal_slices: int = 1,
          overwrite: bool = False) -> dict:
    """Build train.jsonl / test.jsonl (the five tasks per image) and 8-bit images/ masks/ from a manifest and from
    public sources as downloaded (`sources`: (recipe, root) pairs; recipes.py), 2D images and volumes alike.

    Every bad row is reported as `manifest:line: field: problem` (a recipe's row by its image), and nothing reaches
    `out` until all are clean: the set is written into OUT.partial and moved into place at the end. A non-empty `out`
    is refused unless `overwrite` (then it is replaced), and never when it holds the inputs.
    """
    inputs = [os.path.abspath(p) for p in [manifest, *(root for _, root in sources)] if p]
    inside = [p for p in inputs if (p + os.sep).startswith(os.path.abspath(out) + os.sep)]
    if inside:
        raise ValueError(f"--out {out} holds an input ({inside[0]}): give an output folder of its own")
    partial = start_output(out, overwrite)
    work = os.path.join(partial, ".work")  # sliced volumes, drawn boxes: read, then left behind
    os.makedirs(work)
    try:
        summary = _build(manifest, partial, seed, test_frac, vocab, builtin_vocab, sources, work,
                         dict(lesion_labels=lesion_labels, label_pathology=label_pathology, window=window),
                         slices_per_volume, normal_slices)
        shutil.rmtree(work)
        finish_output(partial, out)
        return summary
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _build(manifest, out, seed, test_frac, vocab, builtin_vocab, sources, staging, defaults, more, normal) -> dict:
    rows, errors, dropped = gather(manifest, sources, staging, defaults)
    for where, folder, row in rows:
        errors += [f"{where}: {field}: {problem}" for field, problem in _row_problems(row, folder)]
    named = [{"pathology": name} for _, _, row in rows for name in label_names(row).values()]
    pools, sources_of = distractor_pools([row for _, _, row in rows] + named, vocab, builtin_vocab)
    related, excluded = related_pairs((vocab or {}).get("related")), {}
    for field, pool in pools.items():
        asked = field != "pathology" or any(str(row.get("pathology") or "").strip() for _, _, row in rows) or named
        if asked and len(pool) < 4:
            errors.append(f"{manifest or 'the recipes'}: {field}: only {len(pool)} distinct values ({', '.join(pool)}); "
                          f"four options need at least 4: add rows, give --vocab with more {field} values"
                          + (", or drop --no-builtin-vocab" if not builtin_vocab else ""))
            continue
        answers = [str(row.get(field) or "").strip() for _, _, row in rows] + [n["pathology"] for n in named if field == "pathology"]
        for answer in dict.fromkeys(answers):  # each answer once
            also = [v for v in pool if also_right(answer, v, related) and same_text(v) != same_text(answer)]
            if answer and also:
                excluded.setdefault(field, {})[answer] = also
            if answer and len(pool) - 1 - len(also) < 3:
                errors.append(f"{manifest or 'the recipes'}: {field}: {answer!r} has {len(pool) - 1 - len(also)} "
                              f"distractors that are not also right ({', '.join(also)} excluded): give --vocab with more "
                              f"{field} values")
    if not rows and not errors:
        errors.append(f"{manifest}: no rows" if manifest else "no image left to build; dropped, by recipe and reason: "
                      + json.dumps({name: counts for name, counts in dropped.items() if counts}))
    if not errors:
        rows, errors, volume_stats = slice_volumes(rows, staging, more, normal)
    if errors:
        raise ValueError(f"{len(errors)} problem(s) in {manifest or 'the recipes'}:\n" + "\n".join(errors[:MAX_ERRORS]))
    rng, decks, records = np.random.default_rng(seed), {}, []
    summary = {"images": len(rows), "lesions_without_mask": 0, "distractor_sources": sources_of,
               "distractors_excluded": excluded}  # per answer, values never offered beside it: they are also right
    if volume_stats["volumes"]:
        summary["volumes"] = volume_stats
    if any(dropped.values()):  # images skipped, labels lost, label rows reaching no image: by source and reason
        summary["dropped"] = {name: counts for name, counts in dropped.items() if counts}
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    for i, (where, folder, row) in enumerate(rows):
        name = f"{i:06d}-{os.path.splitext(os.path.basename(row['image']))[0]}"
        read_image(os.path.join(folder, row["image"])).save(os.path.join(out, "images", f"{name}.png"))
        anomaly = str(row["anomaly"]).strip().lower() in YES
        facts = {"anatomy": row["anatomy"].strip(), "modality": row["modality"].strip(), "anomaly": anomaly}
        meta = {"source": row["source"].strip(), "modality": facts["modality"], "anatomy": facts["anatomy"],
                "patient": str(row.get("patient") or "").strip() or name}
        masks = _paths(folder, row.get("mask"))
        lesion, label = lesion_of(masks, row) if anomaly and masks else (None, None)
        pathology = label_names(row).get(label) or str(row.get("pathology") or "").strip()
        if anomaly and pathology:
            facts["pathology"] = pathology
        if lesion is not None:
            facts["region"] = region_of(lesion)
            Image.fromarray(lesion.astype(np.uint8) * 255).save(os.path.join(out, "masks", f"{name}.png"))
            meta["mask"] = f"masks/{name}.png"
        elif anomaly:
            summary["lesions_without_mask"] += 1  # no localization question for it
        for q in questions_for(facts, pools, rng, decks, {"anatomy": {}, "modality": {}, "pathology": {}}, related=related):
            records.append({"id": f"{name}-{q['task']}", "image": f"images/{name}.png", **q, **meta})
    train, test = split_by_patient(records, test_frac, seed)
    write_jsonl(os.path.join(out, "train.jsonl"), train)
    write_jsonl(os.path.join(out, "test.jsonl"), test)
    summary["split_by_source"] = split_counts(train, test)  # no patient on both sides: the promise a benchmark rests on
    count = lambda key: dict(sorted(Counter(r[key] for r in records).items()))  # noqa: E731
    summary.update({"train": len(train), "test": len(test), "questions_per_task": count("task"),
                    "questions_per_source": count("source"), "questions_per_modality": count("modality"),
                    "answer_letters": count("answer")})
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", help="CSV with a header, or JSONL, with the fields image, mask, source, modality, anatomy, "
                   "anomaly, pathology, patient and optionally lesion_labels, label_pathology, window, mask_threshold "
                   "(paths relative to it; an image may be a volume: .nii, .nii.gz, .nrrd, .mha, .mhd or a DICOM folder)")
    p.add_argument("--recipe", action="append", default=[], help="a public source as downloaded (python build.py "
                   "--recipe list); with --root, repeatable: several sources build one set")
    p.add_argument("--root", action="append", default=[], help="the folder the --recipe before it unpacked into")
    p.add_argument("--out", help="output folder: train.jsonl, test.jsonl, images/, masks/, summary.json (a new or "
                   "empty one; nothing reaches it before every problem is known)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (an earlier build) once this one "
                   "is done")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: %(default)s)")
    p.add_argument("--test-frac", type=float, default=0.3, help="share of images in test.jsonl, split by patient "
                   "(default: %(default)s, the paper's 30%%)")
    p.add_argument("--vocab", help="JSON {field: [values]} adding distractor values for anatomy, modality, pathology "
                   "(to the manifest's own and MedAD-38K's built-in ones), and {\"related\": {value: [values]}}: "
                   "values never offered beside each other, both being right (questions.RELATED)")
    p.add_argument("--no-builtin-vocab", action="store_true", help="draw distractors from the manifest and --vocab "
                   "only, not from MedAD-38K's modalities, anatomies and common pathologies")
    p.add_argument("--lesion-labels", default="", help="mask values that are lesion, e.g. 1,2,4 (default: any nonzero); "
                   "for rows that set none")
    p.add_argument("--label-pathology", default="", help="a pathology by mask label, e.g. 1=Necrosis,2=Edema: a slice or "
                   "image is named by its most frequent lesion label")
    p.add_argument("--window", default="", help="CT window centre,width in HU for every CT volume (default: by "
                   "anatomy: brain 40,80; liver 30,150; lung and chest -600,1500; else 50,400)")
    p.add_argument("--slices-per-volume", type=int, default=2, help="lesion slices per volume besides the one of "
                   "largest lesion area, spread over the lesion (default: %(default)s)")
    p.add_argument("--normal-slices", type=int, default=1, help="lesion-free slices per volume, as normal examples "
                   "(default: %(default)s)")
    args = p.parse_args(argv)
    if args.recipe == ["list"]:
        print(recipes.describe())
        return
    unknown = [r for r in args.recipe if r not in recipes.RECIPES]
    if unknown:
        raise SystemExit(f"build.py: unknown recipe {unknown[0]!r}; python build.py --recipe list says which exist")
    if len(args.recipe) != len(args.root):
        raise SystemExit(f"build.py: {len(args.recipe)} --recipe and {len(args.root)} --root: give one --root after each "
                         "--recipe")
    if not (args.manifest or args.recipe) or not args.out:
        raise SystemExit("build.py: give --out and a --manifest, one or more --recipe NAME --root DIR, or both")
    try:
        summary = build(args.manifest, args.out, args.seed, args.test_frac,
                        json.load(open(args.vocab, encoding="utf-8-sig")) if args.vocab else None,
                        builtin_vocab=not args.no_builtin_vocab, sources=list(zip(args.recipe, args.root)),
                        lesion_labels=args.lesion_labels, label_pathology=args.label_pathology, window=args.window,
                        slices_per_volume=args.slices_per_volume, normal_slices=args.normal_slices,
                        overwrite=args.overwrite)
    except ValueError as e:  # every problem of the manifest and the recipes, one a line; nothing was written
        raise SystemExit(f"build.py: {e}") from None
    print(json.dumps(summary, indent=2))
    for name, counts in summary.get("dropped", {}).items():  # never silence: what a source held that the set lacks
        print(f"dropped from --recipe {name}: " + "; ".join(f"{n} {why}" for why, n in counts.items()))


if __name__ == "__main__":
    main()
