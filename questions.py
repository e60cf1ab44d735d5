"""The five questions of an image: the phrasings, options of which only one is right, the templated CoT, the
localization rule, and the split by patient. What every builder (build.py, synth.py) asks the same way.

Imports data.py only (the tasks, letters, regions and the anomaly options of the schema).
"""
from collections import deque

import numpy as np

from data import ANOMALY_OPTIONS, LETTERS, REGIONS, TASKS, same_text


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
            "anomaly": (f"The {anatomy.lower()} shows {cues['pathology'].get(lesion, 'a focal lesion')} "
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
