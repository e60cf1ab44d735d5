"""A synthetic MedAD-style set whose labels are all visible in the images, for the CPU demo and the tests.

Imports data.py and questions.py (the five questions, the localization rule and the patient split of a real build).

    python synth.py --out runs/data --n-images 600 --seed 0     # train.jsonl, test.jsonl, images/, masks/

Every label is visible: anatomy is the body outline, modality the intensity and texture style, a lesion's pathology
its shape and brightness, and its region where it lies. A tiny model can learn all five on a CPU.
"""
import argparse
import os

import numpy as np
from PIL import Image

from questions import questions_for, region_of, split_by_patient
from data import REGIONS, write_jsonl

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


def _lesion(pathology, region, H, W, rng, scale=1.0):
    """(mask, brightness, rim) of a lesion of this kind centred inside `region`, `scale` times the usual size."""
    (x0, x1), (y0, y1) = REGION_BOXES[region]
    cx, cy = rng.uniform(x0, x1) * W, rng.uniform(y0, y1) * H
    r = rng.uniform(0.08, 0.1) * W * scale
    if pathology == "Calcification":  # dots around the centre; the largest one sits on it
        mask = _disc(H, W, cy, cx, 0.035 * W * scale)
        for _ in range(4):
            a = rng.uniform(0, 2 * np.pi)
            mask |= _disc(H, W, cy + np.sin(a) * 0.07 * H * scale, cx + np.cos(a) * 0.07 * W * scale, 0.02 * W * scale)
        return mask, 1.0
    if pathology == "Hemorrhage":
        mask = _disc(H, W, cy, cx, r)
        for _ in range(3):
            mask |= _disc(H, W, cy + rng.uniform(-.4, .4) * r, cx + rng.uniform(-.4, .4) * r, r * 0.7)
        return mask, 1.1
    if pathology in ("Tumor", "Infarct", "Cyst"):
        return _disc(H, W, cy, cx, r), {"Tumor": 0.95, "Infarct": 0.28, "Cyst": 0.0}[pathology]
    raise ValueError(f"unknown synthetic pathology {pathology!r}")


def synth_image(facts: dict, size: int, rng, lesion_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """A uint8 RGB image of the facts and, with a lesion, its uint8 mask (255 on the lesion)."""
    H = W = size
    body = _outline(facts["anatomy"], H, W, rng)
    image = _render(body, facts["modality"], H, W, rng)
    mask = None
    if facts["anomaly"]:
        mask, level = _lesion(facts["pathology"], facts["region"], H, W, rng, lesion_scale)
        image[mask] = level
        if facts["pathology"] == "Cyst":  # a bright rim around the dark centre
            ring = _disc(H, W, *np.argwhere(mask).mean(0) + 0.5, np.sqrt(mask.sum() / np.pi) + 2.5) & ~mask
            image[ring] = 1.0
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), None if mask is None else mask.astype(np.uint8) * 255


def synth(out: str, n_images: int = 600, seed: int = 0, size: int = 112, test_frac: float = 0.3,
          lesion_frac: float = 0.6, shuffle_options: bool = True, lesion_scale: float = 1.0) -> dict:
    """Write a synthetic MedAD set to `out`: images/, masks/, train.jsonl, test.jsonl. Same seed, same bytes.
    shuffle_options=False lists every question's options in one fixed order (see make_question); lesion_scale draws
    lesions that many times their usual size (a radius of 8-10% of the image side)."""
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
        image, mask = synth_image(facts, size, rng, lesion_scale)
        if mask is not None:  # what the rule reads from the mask; a large lesion cut by the border can move
            facts["region"] = region_of(mask)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-images", type=int, default=600, help="number of images, 3 or 5 questions each "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: %(default)s)")
    p.add_argument("--size", type=int, default=112, help="image side in pixels (default: %(default)s)")
    p.add_argument("--test-frac", type=float, default=0.3, help="share of images in test.jsonl, split by patient "
                   "(default: %(default)s)")
    p.add_argument("--option-order", choices=["shuffled", "fixed"], default="shuffled", help="options in random "
                   "order (as MedAD-38K), or always in one order per task: a letter mapping a tiny model learns in "
                   "minutes (default: %(default)s)")
    p.add_argument("--lesion-scale", type=float, default=1.0, help="lesions this many times their usual size, a radius "
                   "of 8-10%% of the image side (default: %(default)s)")
    args = p.parse_args(argv)
    summary = synth(args.out, args.n_images, args.seed, args.size, args.test_frac,
                    shuffle_options=args.option_order == "shuffled", lesion_scale=args.lesion_scale)
    print(f"wrote {args.out}: {summary['images']} images, {summary['train']} train and {summary['test']} test questions")


if __name__ == "__main__":
    main()
