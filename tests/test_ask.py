"""ask.py on the tiny model: one image or a volume's slice, greedy or sampled, with the judge's verdict; a few records
of a JSONL side by side; what it refuses."""
import json

import numpy as np
import pytest

import ask
import data


@pytest.fixture(scope="module")
def first(five):
    return json.loads(open(five).readline())


def test_one_image_greedy_with_the_judges_verdict(sft5, five, first, capsys):
    image = data.load_jsonl(five)[0]["image_path"]
    rows = ask.main(["--ckpt", sft5, "--image", image, "--question", first["question"], "--options",
                     ",".join(first["options"]), "--max-new-tokens", "96", "--judge", sft5])
    printed = capsys.readouterr().out
    (row,) = rows
    assert "== prompt" in printed and first["question"] in printed and "<|image_pad|>" in printed
    assert "-- completion 1 (greedy)" in printed and f"thought: {row['thought']}" in printed
    assert row["letter"] is not None and f"-> {row['letter']} ({first['options'][data.LETTERS.index(row['letter'])]})" in printed
    verdict = "consistent" if row["judge"] == row["letter"] else "inconsistent"
    assert f"judge, from the thought alone: {row['judge']}: {verdict}" in printed


def test_samples_are_counted_and_a_volume_is_asked_by_its_slice(sft5, first, tmp_path, capsys):
    sitk = pytest.importorskip("SimpleITK")
    volume = np.zeros((6, 40, 40), np.float32)
    volume[:, 5:35, 5:35] = np.arange(6)[:, None, None] * 10 + 100
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "scan.nii.gz"))
    rows = ask.main(["--ckpt", sft5, "--image", str(tmp_path / "scan.nii.gz"), "--slice", "4", "--question",
                     first["question"], "--options", ",".join(first["options"]), "--samples", "4",
                     "--max-new-tokens", "32"])
    printed = capsys.readouterr().out
    assert len(rows) == 4 and "(axial slice 4)" in printed and "answers over 4 samples: " in printed
    counts = printed.split("answers over 4 samples: ")[1].splitlines()[0]
    assert sum(int(part.rsplit(" x", 1)[1]) for part in counts.split(", ")) == 4
    ask.main(["--ckpt", sft5, "--image", str(tmp_path / "scan.nii.gz"), "--question", "Which organ?", "--max-new-tokens", "8"])
    assert "(axial slice 2)" in capsys.readouterr().out  # the builder's choice: the middle slice with content
    with pytest.raises(SystemExit, match=r"--slice 9 is outside the volume's 6 axial slices"):
        ask.main(["--ckpt", sft5, "--image", str(tmp_path / "scan.nii.gz"), "--slice", "9", "--question", "Q?"])


def test_records_of_a_set_side_by_side_and_what_it_refuses(sft5, five, capsys):
    rows = ask.main(["--ckpt", sft5, "--data", five, "--limit", "2", "--max-new-tokens", "96"])
    printed = capsys.readouterr().out
    records = data.load_jsonl(five)[:2]
    assert len(rows) == 2 and all(f"== {r['id']}: {r['question']}" in printed for r in records)
    assert printed.count("right") + printed.count("wrong (right: ") >= 2
    with pytest.raises(SystemExit, match="give --image"):
        ask.main(["--ckpt", sft5])
    with pytest.raises(SystemExit, match="--options needs 2 to 10"):
        ask.main(["--ckpt", sft5, "--image", records[0]["image_path"], "--question", "Q?", "--options", "only one"])
