"""The public sources of MedAD-38K as they are downloaded, turned into manifest rows: one table entry a source.

Imports data.py (the mask reader, so that an anomaly answer follows the mask as training reads it) and sources.py.

    python build.py --recipe brats2021 --root ~/data/BraTS2021 --recipe lits --root ~/data/LiTS --out medad_like
    python build.py --recipe list                                    # which exist, what each reads and skips

The recipes are a table of data (sources.py). Only labels a source gives are used: an image whose label is unknown (a
test split whose masks are withheld, an image its label file does not list) is skipped and counted by reason in
summary.json, never answered; a label the files give that reaches no image is counted too. Each recipe cites where its
layout comes from; tests/test_recipes.py builds a fixture of each layout as downloaded, mirrors included.
"""
import glob
import json
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

from data import read_csv, read_mask, read_text
from sources import NOT_COVERED, RECIPES, UNLABELLED  # noqa: F401 (build.py and the tests read them here)


def describe() -> str:
    """`--recipe list`: every recipe, what it reads, skips and why, and where its layout comes from."""
    lines = [f"{name}: {r['about']}\n    expects {', '.join(r['images'])} under --root\n    layout from {r['cite']}"
             for name, r in RECIPES.items()]
    lines += [f"(not a recipe) {name}: {why}" for name, why in NOT_COVERED.items()]
    return "\n".join(lines)


class NoLabelFile(ValueError):
    pass


def _table(root: str, spec: dict) -> tuple[str, dict]:
    """(the file, {key: [values]}) of a label file under root (CSV, or cells separated by spec['sep'], e.g. PH2's '||'); spec['file']
    is a glob, or a list of them in order of preference. Headers are compared with their spaces stripped (IDRiD's
    'Risk of macular edema ' ends in one), and trailing empty cells are no cells (NIH's BBox_List_2017.csv: a header of
    nine cells, rows of six). Only the columns the recipe reads are needed; of several key columns (a mirror's
    png_image_path and tif_image_path), those the file has. ValueError naming the file (and line) when it is missing,
    unreadable, lacks a column read, or has a row too short for them."""
    patterns = spec["file"] if isinstance(spec["file"], list) else [spec["file"]]
    found = next((sorted(hits)[0] for p in patterns if (hits := glob.glob(os.path.join(glob.escape(root), p),
                                                                          recursive=True))), None)
    if found is None:
        raise NoLabelFile(f"no {' or '.join(patterns)} under it (the recipe's label file)")
    if spec.get("sep", ",") == ",":
        rows = read_csv(found)
    else:
        rows = [[cell.strip() for cell in line.split(spec["sep"])] for line in read_text(found).splitlines()]
    trim = lambda cells: cells[:max((i + 1 for i, c in enumerate(cells) if c.strip()), default=0)]  # noqa: E731
    header = [h.strip() for h in trim(rows[0])] if rows else []
    keys = [k for k in spec.get("keys") or [spec["key"]] if k in header]
    cols = spec.get("xywh") or [spec["value"]]
    missing = [c for c in cols if c not in header] or ([] if keys else [(spec.get("keys") or [spec["key"]])[0]])
    if missing:
        raise ValueError(f"{found}: no column {missing[0]!r} (columns: {', '.join(header)})")
    key_at, value_at = [header.index(k) for k in keys], [header.index(c) for c in cols]
    need = max(key_at + value_at) + 1
    table, short = {}, []
    for line, cells in enumerate(rows[1:], 2):
        if not trim(cells):
            continue  # a blank line
        if len(cells) < need:
            short.append(f"{found}:{line}: {len(trim(cells))} cells, where the columns read need {need}")
            continue
        values = [cells[i].strip() for i in value_at]
        for i in key_at:
            table.setdefault(cells[i].strip(), []).append(values)
    if short:
        raise ValueError("\n".join(short[:20]) + (f"\n... and {len(short) - 20} more" if len(short) > 20 else ""))
    return found, table


def _images(recipe: dict, root: str) -> tuple[list[str], int]:
    """The recipe's images under root, each once: patterns in order of preference, and an image that `same` names as
    one already found (the same frame in another format) left out; and how many were left out."""
    keep, seen, real, again = [], set(), set(), 0
    for pattern in recipe["images"]:
        for path in sorted(glob.glob(os.path.join(glob.escape(root), pattern), recursive=True)):
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if os.path.realpath(path) in real:  # a folder linked twice (a symlink loop): the same file again
                continue
            real.add(os.path.realpath(path))
            if re.search(recipe.get("exclude", r"$^"), rel) or not re.search(recipe.get("select", ""), rel):
                continue
            same = re.search(recipe["same"], rel).group(1) if "same" in recipe and re.search(recipe["same"], rel) else rel
            if same in seen:
                again += 1
                continue
            seen.add(same)
            keep.append(path)
    return keep, again


def _sequences(root: str, spec: dict) -> dict:
    """{frame number: group} of a source whose patient is a video: its label file where the download has one (the
    CVC-ClinicDB mirror's metadata.csv, keyed by its image paths' names), else the published frame ranges."""
    try:
        _, table = _table(root, spec["table"])
    except NoLabelFile:  # the official release: the published ranges
        return {n: str(i) for i, (a, b) in enumerate(spec["ranges"], 1) for n in range(a, b + 1)}
    frames = {}
    for key, values in table.items():
        match = re.search(spec["frame"], key.replace("\\", "/"))
        if match:
            frames[int(match.group(1))] = values[0][0]
    return frames


def _patient(recipe: dict, rel: str, sequences: dict | None) -> str:
    """The patient of an image: the groups of the recipe's patient pattern joined, its video, or (no pattern) the
    image itself. A pattern that matches nothing is an error: an image would silently become a patient of its own."""
    rule = recipe.get("patient")
    if rule is None:
        return os.path.splitext(os.path.basename(rel))[0]
    pattern = rule["frame"] if isinstance(rule, dict) else rule
    match = re.search(pattern, rel)
    if not match:
        raise ValueError(f"{rel}: the recipe's patient pattern {pattern} matches nothing in this path")
    if isinstance(rule, dict):
        frame = int(match.group(1))
        if frame not in sequences:
            raise ValueError(f"{rel}: frame {frame} is in no video of the source's grouping")
        return f"seq{sequences[frame]}"
    return "-".join(match.groups())


def _label(classes: dict, tables: list, rel: str, ident: str) -> tuple[str | None, tuple | None]:
    """An image's class and the label-file row it came from ((table number, key), None for a path): from its path, or
    from the label file that covers its folder (by its name, with or without the extension, or its patient)."""
    if "path" in classes:
        found = re.search(classes["path"], rel)
        return (found.group(1) if found else None), None
    name = os.path.basename(rel)
    for i, (where, _, table) in enumerate(tables):
        if where is None or re.search(where, rel):
            key = next((k for k in (name, os.path.splitext(name)[0], ident) if k in table), None)
            return (table[key][0][0], (i, key)) if key else (None, None)
    return None, None


def _missing_class(recipe: dict, root: str, value: str) -> str:
    """Why a class of the recipe has no image: a folder of that name spelled otherwise, or none at all."""
    spelled = sorted({os.path.relpath(os.path.join(d, f), root) for d, dirs, _ in os.walk(root) for f in dirs
                      if f.lower() == value.lower() and f != value})
    return (f"found no image of class {value!r} ({', '.join(recipe['images'])} under --root)" +
            (f": the folder is spelled {spelled[0]!r} here; rename it {value!r}" if spelled else
             ": is that part of the download missing?"))


def rows(name: str, root: str, staging: str) -> tuple[list[dict], dict]:
    """Manifest rows of one source under `root` (paths absolute; boxes and polygons drawn as masks into `staging`),
    and what was dropped, by reason: images skipped, labels an image lost (an abnormal image whose mask file is
    missing keeps no localization question), label-file rows and boxes that reach no image. ValueError naming the
    file when the root holds none of the recipe's files, a class or every mask is missing, or a label file it needs is
    missing or unreadable."""
    recipe = RECIPES[name]
    root = os.path.abspath(root)
    images, again = _images(recipe, root)
    if not images:
        raise ValueError(f"found none of {', '.join(recipe['images'])}: give as --root the folder the download unpacked "
                         "into (python build.py --recipe list says what each recipe expects)")
    dropped = {}

    def drop(why: str, n: int = 1):
        if n:
            dropped[why] = dropped.get(why, 0) + n

    drop("the same image again (another format or folder of the download)", again)
    classes = recipe.get("classes", {})
    tables = [(spec.get("where"), *_table(root, spec)) for spec in classes.get("tables", [])]
    box_file, boxes = _table(root, recipe["boxes"]) if "boxes" in recipe else (None, {})
    sequences = _sequences(root, recipe["patient"]) if isinstance(recipe.get("patient"), dict) else None
    out, used, seen_classes, boxed, wanting = [], set(), set(), set(), []  # wanting: abnormal images' expected masks
    any_mask = False
    for path in images:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        ident = _patient(recipe, rel, sequences)
        row = {**recipe["row"], "image": path, "patient": f"{name}-{ident}"}
        fields, base = {}, os.path.basename(rel)
        if classes:
            value, key = _label(classes, tables, rel, ident)
            used.add(key)
            seen_classes.add(value)
            if value is None or ("skip" in classes and re.search(classes["skip"], value)):
                drop("no class, or several")
                continue
            fields = classes["map"].get(value, classes.get("other", {}))
            row.update({k: str(v).format(value=value) for k, v in fields.items() if k != "needs_mask"})
        expected = [re.sub(pattern, repl, rel) for pattern, repl in recipe.get("masks", []) if re.search(pattern, rel)]
        masks = sorted({m for e in expected for m in glob.glob(os.path.join(glob.escape(root),
                                                                            glob.escape(e).replace("[*]", "*")))})
        if recipe.get("masks") and row.get("anomaly") in ("yes", "mask"):
            wanting.append(expected[0] if expected else "?")
            any_mask = any_mask or bool(masks)
        if boxes.get(base) and row.get("anomaly") == "yes":
            masks = [_box_mask(path, boxes[base], staging)]
            boxed.add(base)
        if "polygons" in recipe:
            masks, why = _polygon_mask(path, rel, root, recipe["polygons"], staging)
            if why:
                drop(why)
                continue
        if fields.get("needs_mask") and not masks:
            drop("abnormal without a mask")
            continue
        if recipe.get("unlabelled_without_mask") and row.get("anomaly") in ("yes", "mask") and not masks:
            drop(UNLABELLED)
            continue
        if row.get("anomaly") == "mask":  # each image's answer from its own mask (RESC: most slices are normal)
            labels, threshold = lesion_rule(row)
            row["anomaly"] = "yes" if any(read_mask(m, labels, threshold).any() for m in masks) else "no"
        if row.get("anomaly") == "yes" and masks:
            row["mask"] = "|".join(masks)
        elif row.get("anomaly") == "yes" and recipe.get("masks"):  # the source ships one: the download lost it
            drop("abnormal, its mask file missing: no localization question")
        if row.get("anomaly") == "no":
            row.pop("pathology", None)
        out.append(row)
    if wanting and not any_mask:
        raise ValueError(f"none of its {len(wanting)} abnormal images has its mask file (for the first, {wanting[0]}): "
                         "is the masks' part of the download missing, or is it a split whose labels are not released?")
    for value in classes.get("map", {}) if "path" in classes else ():
        if value not in seen_classes:
            raise ValueError(_missing_class(recipe, root, value))
    for i, (_, file, table) in enumerate(tables):
        drop(f"a row of {os.path.basename(file)} naming no image of the download",
             sum(len(v) for k, v in table.items() if (i, k) not in used))
    names = {os.path.basename(p) for p in images}
    drop(f"a box of {os.path.basename(box_file or '')} on an image not in the download",
         sum(len(v) for k, v in boxes.items() if k not in names))
    drop(f"a box of {os.path.basename(box_file or '')} on an image skipped or called normal",
         sum(len(v) for k, v in boxes.items() if k in names and k not in boxed))
    return out, dropped


def lesion_rule(row: dict) -> tuple[list[int] | None, int]:
    """(lesion label values or None for any, the least value counted as lesion) of a row's mask."""
    labels = [int(v) for v in str(row.get("lesion_labels") or "").split(",") if v.strip()]
    return labels or None, int(row.get("mask_threshold") or 1)


def _box_mask(image: str, boxes: list, staging: str) -> str:
    """A PNG mask of the image's size with its boxes ([x, y, w, h] in pixels) filled."""
    with Image.open(image) as im:
        width, height = im.size
    mask = np.zeros((height, width), np.uint8)
    for x, y, w, h in (map(float, b) for b in boxes):
        mask[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = 255
    os.makedirs(os.path.join(staging, "boxes"), exist_ok=True)
    path = os.path.join(staging, "boxes", os.path.splitext(os.path.basename(image))[0] + ".png")
    Image.fromarray(mask).save(path)
    return path


def _polygon_mask(image: str, rel: str, root: str, spec: dict, staging: str) -> tuple[list[str], str | None]:
    """([a PNG mask of the image's polygons], None), or ([], why it is skipped): DDTI's N.xml holds, per <mark>, the
    image number in <image> and the polygons in <svg>, a JSON list of {"points": [{"x": .., "y": ..}, ...]}."""
    pattern, repl = spec["file"]
    xml = os.path.join(root, os.path.dirname(rel), re.sub(pattern, repl, os.path.basename(rel)))
    number = re.search(spec["image"], rel).group(1)
    try:
        marks = [m for m in ET.parse(xml).getroot().iter("mark") if (m.findtext("image") or "").strip() == number]
    except (OSError, ET.ParseError):
        return [], "no readable polygon file beside it"
    if not marks:
        return [], "no polygon for this image (unlabelled)"
    with Image.open(image) as im:
        mask = Image.new("L", im.size, 0)
    draw = ImageDraw.Draw(mask)
    for mark in marks:
        try:
            regions = json.loads(mark.findtext("svg") or "")
            polygons = [[(float(p["x"]), float(p["y"])) for p in region["points"]] for region in regions]
        except (ValueError, KeyError, TypeError):
            return [], "a polygon cut short or unreadable (<svg> JSON)"
        for points in polygons:
            if len(points) >= 3:
                draw.polygon(points, fill=255)
    if not np.asarray(mask).any():
        return [], "no polygon for this image (unlabelled)"
    os.makedirs(os.path.join(staging, "polygons"), exist_ok=True)
    path = os.path.join(staging, "polygons", re.sub(r"[^\w.-]", "_", rel) + ".png")
    mask.save(path)
    return [path], None
