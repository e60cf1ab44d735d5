import filecmp
import json
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import data
import questions
import sampler
import synth

GOOD = {"id": "x-1", "image": "img.png", "task": "anomaly", "question": "Is there an anomaly?",
        "options": ["Normal", "Abnormal", "Artifact only", "Indeterminate"], "answer": "B", "cot": "A mass. So Abnormal."}


def write_lines(tmp_path, lines):
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[:len(whole) // 2])
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return str(path)


@pytest.mark.parametrize("bad, field, words", [
    ("{not json", "-", "invalid JSON"),
    ({k: v for k, v in GOOD.items() if k != "question"}, "question", "missing"),
    ({**GOOD, "options": "A, B, C, D"}, "options", "must be a list"),
    ({**GOOD, "task": "segmentation"}, "task", "unknown task"),
    ({**GOOD, "options": ["a", "b", "c"]}, "options", "exactly 4 non-empty"),
    ({**GOOD, "options": ["a", "b", "c", "a"]}, "options", "4 distinct options"),
    ({**GOOD, "options": ["Brain", "Liver", "brain", "Lung"]}, "options", "4 distinct options, case and spaces aside"),
    ({**GOOD, "options": ["Lymph Node", "Liver", "lymph  node ", "Lung"]}, "options", "4 distinct options"),
    ({**GOOD, "answer": "E"}, "answer", "one letter of A, B, C, D"),
    ({**GOOD, "answer": "AB"}, "answer", "one letter of A, B, C, D"),  # `in "ABCD"` let these through
    ({**GOOD, "answer": "ABCD"}, "answer", "one letter of A, B, C, D"),
    ({**GOOD, "answer": ""}, "answer", "one letter of A, B, C, D"),
    ({**GOOD, "answer": 1}, "answer", "must be a str"),
    ({**GOOD, "image": "nowhere.png"}, "image", "file not found"),
    ({**GOOD, "image": "broken.png"}, "image", "not a decodable image"),
    ({**GOOD, "image": "truncated.png"}, "image", "not a decodable image"),  # a valid header, half the data
    ({**GOOD, "mask": "nowhere.png"}, "mask", "file not found"),
])
def test_each_malformed_line_names_file_line_and_field(tmp_path, bad, field, words):
    path = write_lines(tmp_path, [GOOD, bad])
    with pytest.raises(ValueError) as e:
        data.load_jsonl(path)
    assert f"{path}:2: {field}: " in str(e.value) and words in str(e.value)


def test_every_bad_line_is_reported_in_line_order(tmp_path):
    path = write_lines(tmp_path, [{**GOOD, "image": "broken.png"}, GOOD, "[1, 2]", {**GOOD, "task": "x"}])
    with pytest.raises(ValueError) as e:
        data.load_jsonl(path)
    msg = str(e.value)
    assert msg.index(f"{path}:1: image") < msg.index(f"{path}:3: -") < msg.index(f"{path}:4: task") and ":2:" not in msg


def test_a_byte_order_mark_is_read_and_a_non_utf8_byte_named(tmp_path):
    path = write_lines(tmp_path, [GOOD, GOOD])
    text = open(path, encoding="utf-8").read()
    open(path, "w", encoding="utf-8-sig").write(text)  # as Windows editors and pandas' utf-8-sig save it
    assert len(data.load_jsonl(path)) == 2
    lines = open(path, "rb").read().split(b"\n")
    lines[1] = lines[1].replace("Is there".encode(), "Is th\xe9re".encode("latin-1"))  # a Latin-1 export
    open(path, "wb").write(b"\n".join(lines))
    with pytest.raises(ValueError, match=rf"{path}:2: -: not UTF-8 \(byte 0xe9"):
        data.load_jsonl(path)


def ramp16(H=64, W=256):
    return (np.arange(W, dtype=np.uint32)[None].repeat(H, 0) * 65535 // (W - 1)).astype(np.uint16)


@pytest.mark.parametrize("kind", ["L", "I;16", "RGB", "RGBA", "LA", "P"])
def test_one_image_reader_for_every_kind_of_image(tmp_path, kind):
    ramp8 = (ramp16() >> 8).astype(np.uint8)
    image = {"L": Image.fromarray(ramp8), "I;16": Image.fromarray(ramp16()),
             "RGB": Image.fromarray(np.stack([ramp8] * 3, -1)),
             "RGBA": Image.fromarray(np.stack([ramp8] * 3 + [np.where(ramp8 > 127, 255, 0).astype(np.uint8)], -1)),
             "LA": Image.fromarray(np.stack([ramp8, np.where(ramp8 > 127, 255, 0).astype(np.uint8)], -1)),
             "P": Image.fromarray(np.stack([ramp8] * 3, -1)).convert("P", palette=Image.Palette.ADAPTIVE)}[kind]
    image.save(tmp_path / "x.png")
    got = np.asarray(data.read_image(str(tmp_path / "x.png")))
    assert got.shape == (64, 256, 3) and got.dtype == np.uint8
    grey = got.mean(-1)
    if kind in ("RGBA", "LA"):  # transparent pixels over black, opaque ones as they are
        assert (grey[:, :120] == 0).all() and grey[:, 140:].min() > 130
    else:  # the ramp survives: dark on the left, bright on the right, no band saturated
        assert grey[:, 0].max() < 10 and grey[:, -1].min() > 245 and (grey == 255).mean() < 0.02


def test_16bit_images_are_windowed_not_clipped_and_as_the_builder_writes_them(tmp_path):
    Image.fromarray(ramp16()).save(tmp_path / "ct.png")
    with Image.open(tmp_path / "ct.png") as im:
        clipped = np.asarray(im.convert("RGB"))
    assert (clipped == 255).mean() > 0.9  # what convert("RGB") does with 16-bit data
    got = np.asarray(data.read_image(str(tmp_path / "ct.png")))
    assert (got == 255).mean() < 0.02 and len(np.unique(got)) > 200


def test_valid_records_resolve_image_paths(tmp_path):
    records = data.load_jsonl(write_lines(tmp_path, [GOOD]))
    assert records[0]["image_path"] == str(tmp_path / "img.png")


def square(H, W, r0, r1, c0, c1):
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


@pytest.mark.parametrize("mask, region", [
    (square(100, 100, 10, 20, 10, 20), "Left Upper"),
    (square(100, 100, 10, 20, 80, 90), "Right Upper"),
    (square(100, 100, 80, 90, 10, 20), "Left Lower"),
    (square(100, 100, 80, 90, 80, 90), "Right Lower"),
    (square(100, 100, 45, 55, 45, 55), "Center Region"),
    (square(100, 200, 24, 26, 49, 51), "Center Region"),  # centroid x=50=W/4, y=25=H/4: bounds are included
    (square(100, 200, 23, 25, 49, 51), "Left Upper"),  # y=24 < H/4
    (square(100, 200, 70, 80, 150, 152), "Right Lower"),  # x=151 > 3W/4
    (square(100, 100, 45, 55, 74, 76), "Center Region"),  # x=75=3W/4 and y=75=3H/4: the upper bounds included too
    (square(100, 100, 74, 76, 45, 55), "Center Region"),
    (square(100, 100, 45, 55, 69, 71), "Center Region"),  # x=70 and y=70: the whole middle half, not less
    (square(100, 100, 69, 71, 45, 55), "Center Region"),
    (square(100, 100, 5, 15, 49, 51), "Right Upper"),  # x=50=W/2 outside the middle half: right, as x < W/2 is left
    (square(100, 100, 49, 51, 5, 15), "Left Lower"),
    (square(100, 100, 5, 15, 39, 41), "Left Upper"),  # x=40 and y=40: the whole left (upper) half, not less
    (square(100, 100, 39, 41, 85, 95), "Right Upper"),
])
def test_region_of_follows_the_design_rule(mask, region):
    assert questions.region_of(mask) == region


def test_region_of_uses_the_largest_component_not_the_first():
    mask = square(100, 100, 5, 8, 5, 8)  # small, first in scan order, left upper
    mask[70:95, 70:95] = 1  # large, right lower
    assert questions.region_of(mask) == "Right Lower"
    diagonal = np.eye(30, dtype=np.uint8)  # 8-connected: one component along the diagonal
    diagonal[0:2, 25:30] = 1
    assert questions.region_of(np.pad(diagonal, ((0, 70), (0, 70)))) == "Left Upper"


def components_by_union_find(mask):
    """The 8-connected components as sets of (row, col), found another way than questions.py's search."""
    parent = {p: p for p in zip(*np.nonzero(mask))}

    def root(p):
        while parent[p] != p:
            p = parent[p]
        return p
    for r, c in parent:
        for q in ((r, c + 1), (r + 1, c - 1), (r + 1, c), (r + 1, c + 1)):
            if q in parent:
                parent[root(q)] = root((r, c))
    groups = {}
    for p in parent:
        groups.setdefault(root(p), set()).add(p)
    return list(groups.values())


def test_largest_component_is_the_8_connected_one_on_random_masks():
    # random blobs make every shape a search can miss (U and V shapes, diagonal chains, one-pixel gaps) and ties
    rng, ties = np.random.default_rng(0), 0
    for _ in range(300):
        mask = rng.random((9, 9)) < rng.uniform(0.2, 0.5)
        if not mask.any():
            continue
        groups = components_by_union_find(mask)
        size = max(len(g) for g in groups)
        largest = [g for g in groups if len(g) == size]
        ties += len(largest) > 1
        first = min(largest, key=min)  # on ties, the one whose first pixel comes first in scan order
        got = questions._largest_component(mask)
        assert len(got) == size and set(map(tuple, got.tolist())) == first, mask.astype(int)
    assert ties > 10


def test_region_of_rejects_an_empty_mask():
    with pytest.raises(ValueError, match="^empty lesion mask"):
        questions.region_of(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="must be 2D, got shape"):
        questions.region_of(np.zeros((2, 10, 10)))


def test_larger_lesions_keep_the_localization_rule(tmp_path):
    # a large lesion near the border is cut by it (1 in 2,000 at demo.sh's twice the size, 1 in 10 at four times):
    # the answer is still what region_of reads from the mask
    areas = {}
    for scale in (1, 2, 4):
        synth.synth(str(tmp_path / str(scale)), n_images=150, seed=3, lesion_scale=scale)
        records = data.load_jsonl(str(tmp_path / str(scale) / "train.jsonl"))
        masks = {r["image"]: np.array(Image.open(r["mask_path"])) > 0 for r in records if r.get("mask_path")}
        areas[scale] = np.mean([m.sum() for m in masks.values()])
        for r in records:
            if r["task"] == "localization":
                assert questions.region_of(masks[r["image"]]) == r["options"]["ABCD".index(r["answer"])], r["id"]
    assert 3 < areas[2] / areas[1] < 4.5, areas


def test_synthetic_set_is_valid_balanced_and_consistent(synth_dir):
    train = data.load_jsonl(os.path.join(synth_dir, "train.jsonl"))
    test = data.load_jsonl(os.path.join(synth_dir, "test.jsonl"))
    records = train + test
    letters = Counter(r["answer"] for r in records)
    assert all(0.2 <= letters[x] / len(records) <= 0.3 for x in "ABCD"), letters
    assert set(r["task"] for r in records) == set(data.TASKS)
    for r in records:
        assert r["cot"] and r["cot"].endswith(f"So the answer is {r['options']['ABCD'.index(r['answer'])]}.")
        if r["task"] == "localization":
            mask = np.array(Image.open(r["mask_path"]))
            assert questions.region_of(mask) == r["options"]["ABCD".index(r["answer"])], r["id"]
    assert not {r["patient"] for r in train} & {r["patient"] for r in test}
    assert 0.2 < len({r["image"] for r in test}) / len({r["image"] for r in records}) < 0.4


def test_synthetic_set_is_byte_identical_for_one_seed(tmp_path):
    a, b = synth.synth(str(tmp_path / "a"), 12, seed=3), synth.synth(str(tmp_path / "b"), 12, seed=3)
    assert a == b
    for name in ["train.jsonl", "test.jsonl", "images/synth-00005.png"]:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    synth.synth(str(tmp_path / "c"), 12, seed=4)
    assert not filecmp.cmp(tmp_path / "a" / "train.jsonl", tmp_path / "c" / "train.jsonl", shallow=False)


def test_fixed_option_order_keeps_each_tasks_order_and_the_right_letter(tmp_path):
    synth.synth(str(tmp_path), 40, seed=1, shuffle_options=False)
    records = data.load_jsonl(str(tmp_path / "train.jsonl")) + data.load_jsonl(str(tmp_path / "test.jsonl"))
    order = {**synth.SYNTH_VOCAB, "anomaly": list(data.ANOMALY_OPTIONS), "localization": list(data.REGIONS)}
    for r in records:
        assert r["options"] == sorted(r["options"], key=order[r["task"]].index), r["id"]
        assert r["cot"].endswith(f"So the answer is {r['options']['ABCD'.index(r['answer'])]}.")
    shown = Counter(tuple(r["options"]) for r in records if r["task"] == "anatomy")
    assert len(shown) > 1  # the three distractors still vary


def test_prompt_holds_image_question_and_lettered_options(tiny, records):
    _, processor = tiny
    r = records[0]
    text = processor.apply_chat_template(data.messages(r), add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and data.SYSTEM_PROMPT in text
    assert f"{r['question']}\nA. {r['options'][0]}\nB. {r['options'][1]}" in text
    assert text.endswith("<|im_start|>assistant\n") and r["cot"] not in text


def test_target_batch_labels_exactly_the_target_and_its_end_of_turn(tiny, records):
    _, processor = tiny
    ids, mask = data.target_batch(processor.tokenizer, records[:4], sampler.end_of_turn(processor))
    for i, r in enumerate(records[:4]):
        labelled = processor.tokenizer.decode(ids[i][mask[i].bool()])
        assert labelled == f"<think>{r['cot']}</think><answer>{r['answer']}</answer><|im_end|>"
        assert (ids[i][~mask[i].bool()] == processor.tokenizer.pad_token_id).all()
