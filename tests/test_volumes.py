"""CT and MR volumes into the builder: display orientation, square pixels, windows, slice choice, label maps, and
every kind of bad volume named by manifest, line and field (volumes written by the tests themselves)."""
import csv
import os
import sys

import numpy as np
import pytest
from helpers import volume, write_dicom_series

import build
import data
import volumes

sitk = pytest.importorskip("SimpleITK")
FIELDS = ["image", "mask", "source", "modality", "anatomy", "anomaly", "pathology", "patient", "lesion_labels"]


def brain(depth=9, size=32, lesion_rows=slice(4, 10), lesion_cols=slice(3, 9), label=1):
    """An MR-like volume [z, y, x] (LPS axes: small y anterior, small x the patient's right) with a lesion in the
    anterior right of slices 3-6 (largest on slice 5), and its label volume."""
    image = np.zeros((depth, size, size), np.float32)
    image[:, 2:-2, 2:-2] = 100 + np.arange(depth)[:, None, None]  # tissue, brighter upward
    labels = np.zeros(image.shape, np.uint8)
    for z, grow in ((3, 0), (4, 1), (5, 3), (6, 1)):
        labels[z, lesion_rows.start:lesion_rows.stop + grow, lesion_cols.start:lesion_cols.stop + grow] = label
    image[labels > 0] = 300
    return image, labels


def manifest(tmp_path, rows):
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in FIELDS})
    return str(path)


def row(image, mask="", **extra):
    return {**dict(image=image, mask=mask, source="s", modality="MRI", anatomy="Brain", anomaly="yes",
                   pathology="Glioma", patient="p1"), **extra}


def built(tmp_path, rows, **kw):
    summary = build.build(manifest(tmp_path, rows), str(tmp_path / "out"), test_frac=0.0, **kw)
    return summary, data.load_jsonl(str(tmp_path / "out" / "train.jsonl"))


@pytest.mark.parametrize("store", ["permuted", "flipped", "ras", "nrrd", "mha", "dicom"])
def test_a_volume_stored_any_way_gives_the_same_slices(tmp_path, store):
    image, labels = brain()
    reference = volume(image, spacing=(0.9, 0.9, 2.0), origin=(-10, -12, 5))
    stored = {"permuted": lambda i: sitk.PermuteAxes(i, [2, 0, 1]), "flipped": lambda i: sitk.Flip(i, [True, False, True]),
              "ras": lambda i: sitk.Flip(i, [True, True, False]), "nrrd": lambda i: i, "mha": lambda i: i,
              "dicom": lambda i: i}[store](reference)
    if store == "dicom":
        write_dicom_series(sitk.Cast(stored, sitk.sitkInt16), str(tmp_path / "series"))
        path = str(tmp_path / "series")
    else:
        path = str(tmp_path / f"v.{ {'nrrd': 'nrrd', 'mha': 'mha'}.get(store, 'nii.gz') }")
        sitk.WriteImage(stored, path)
    assert np.array_equal(volumes.display(volumes.read(path)), volumes.display(reference))


def test_the_patients_right_is_on_the_viewers_left_and_anterior_up(tmp_path):
    """A lesion in the patient's right anterior brain: 'Left Upper' in the viewer's terms, stored in RAS as NIfTI
    from the challenges often is."""
    image, labels = brain()
    ras = lambda a: sitk.Flip(volume(a, spacing=(1, 1, 2)), [True, True, False])  # noqa: E731
    sitk.WriteImage(ras(image), str(tmp_path / "v.nii.gz"))
    sitk.WriteImage(ras(labels), str(tmp_path / "v_seg.nii.gz"))
    summary, records = built(tmp_path, [row("v.nii.gz", "v_seg.nii.gz")])
    loc = [r for r in records if r["task"] == "localization"]
    assert loc and all(r["options"][data.LETTERS.index(r["answer"])] == "Left Upper" for r in loc)
    assert summary["volumes"]["volumes"] == 1 and summary["volumes"]["seconds_per_volume"] is not None


def test_square_pixels_and_the_slices_chosen(tmp_path):
    image, labels = brain(depth=12)
    sitk.WriteImage(volume(image, spacing=(0.5, 1.0, 3.0)), str(tmp_path / "v.mha"))  # 0.5 mm columns, 1 mm rows
    sitk.WriteImage(volume(labels, spacing=(0.5, 1.0, 3.0)), str(tmp_path / "m.mha"))
    shown = volumes.display(volumes.read(str(tmp_path / "v.mha")))
    assert shown.shape == (12, 64, 32)  # rows resampled to 0.5 mm: square pixels
    cut = volumes.slices(str(tmp_path / "v.mha"), str(tmp_path / "m.mha"), modality="MRI", anatomy="Brain", more=2,
                         normal=2)
    cut, present = cut
    lesion = [s["z"] for s in cut if s["lesion"] is not None]
    normal = [s["z"] for s in cut if s["lesion"] is None]
    assert present == [1]
    # the largest (5), and one inside the extent 3-6: not its end slices, its smallest cross-sections
    assert sorted(lesion) == [4, 5]
    assert len(normal) == 2 and not set(normal) & {3, 4, 5, 6}  # lesion-free slices, as normal examples
    assert all(s["lesion"].shape == s["pixels"].shape == (64, 32) for s in cut if s["lesion"] is not None)


def test_ct_is_windowed_by_anatomy_and_mr_by_its_own_percentiles(tmp_path):
    assert volumes.window(np.zeros(3), "CT", "Brain") == (0, 80)  # centre 40, width 80 HU
    assert volumes.window(np.zeros(3), "ct", "Lung") == (-1350, 150)
    assert volumes.window(np.zeros(3), "CT", "Knee") == (-150, 250)  # soft tissue by default
    assert volumes.window(np.zeros(3), "CT", "Brain", (50, 100)) == (0, 100)  # --window
    mr = np.concatenate([np.full(500, 10.0), np.full(500, 1000.0)])
    lo, hi = volumes.window(mr, "MRI", "Brain")
    assert lo == pytest.approx(10) and hi == pytest.approx(1000)  # the volume's, not a slice's
    hu = np.array([[0.0, 40.0, 80.0, 200.0]])
    assert volumes.to_uint8(hu, *volumes.window(hu, "CT", "Brain")).tolist() == [[0, 128, 255, 255]]


def test_label_maps_choose_lesion_values_and_name_pathologies(tmp_path):
    image, labels = brain()
    labels[labels == 1] = 2  # LiTS: 2 tumour ...
    labels[1:8, 15:28, 15:28] = np.where(labels[1:8, 15:28, 15:28] == 0, 1, labels[1:8, 15:28, 15:28])  # ... 1 liver
    for a, name in ((image, "v.nii.gz"), (labels, "m.nii.gz")):
        sitk.WriteImage(volume(a), str(tmp_path / name))
    _, records = built(tmp_path, [row("v.nii.gz", "m.nii.gz", lesion_labels="2")], label_pathology="2=Tumor",
                       slices_per_volume=0, normal_slices=0)
    loc = [r for r in records if r["task"] == "localization"]
    assert len(loc) == 1 and loc[0]["options"][data.LETTERS.index(loc[0]["answer"])] == "Left Upper"  # the tumour's
    path = [r for r in records if r["task"] == "pathology"]
    assert path[0]["options"][data.LETTERS.index(path[0]["answer"])] == "Tumor"
    # without --lesion-labels the liver counts too: its larger area moves the chosen slice and region
    (tmp_path / "out").rename(tmp_path / "labelled")
    _, records = built(tmp_path, [row("v.nii.gz", "m.nii.gz")], slices_per_volume=0, normal_slices=0)
    loc = [r for r in records if r["task"] == "localization"]
    assert loc[0]["options"][data.LETTERS.index(loc[0]["answer"])] != "Left Upper"


def bad_volumes(tmp_path):
    image, labels = brain()
    sitk.WriteImage(volume(image), str(tmp_path / "ok.nii.gz"))
    sitk.WriteImage(volume(labels), str(tmp_path / "ok_seg.nii.gz"))
    sitk.WriteImage(volume(labels[:, :, :-2]), str(tmp_path / "small_seg.nii.gz"))  # another shape
    sitk.WriteImage(volume(labels, spacing=(1, 1, 3)), str(tmp_path / "spaced_seg.nii.gz"))  # another spacing
    sitk.WriteImage(sitk.JoinSeries([volume(image), volume(image)]), str(tmp_path / "four.nii.gz"))  # 4D
    nan = image.copy()
    nan[2, 3, 3] = np.nan
    sitk.WriteImage(volume(nan), str(tmp_path / "nan.nii.gz"))
    raw = open(tmp_path / "ok.nii.gz", "rb").read()
    open(tmp_path / "cut.nii.gz", "wb").write(raw[:len(raw) // 2])  # truncated
    two = tmp_path / "two"
    write_dicom_series(sitk.Cast(volume(image), sitk.sitkInt16), str(two), uid="1.2.3.1", prefix="a")
    write_dicom_series(sitk.Cast(volume(image), sitk.sitkInt16), str(two), uid="1.2.3.2", prefix="b")
    write_dicom_series(sitk.Cast(volume(image, spacing=(1, 1, 2)), sitk.sitkInt16), str(tmp_path / "gap"), skip=(4,))


@pytest.mark.parametrize("image, mask, extra, field, words", [
    ("ok.nii.gz", "small_seg.nii.gz", {}, "mask", "on another grid than the image: size"),
    ("ok.nii.gz", "spaced_seg.nii.gz", {}, "mask", "on another grid than the image: spacing"),
    ("four.nii.gz", "", {}, "image", "4D volume"),
    ("nan.nii.gz", "", {}, "image", "NaN"),
    ("cut.nii.gz", "", {}, "image", "cannot read"),
    ("two", "", {}, "image", "holds 2 DICOM series"),
    ("gap", "", {}, "image", "misses slices"),
    ("missing.nii.gz", "", {}, "image", "file not found"),
])
def test_each_bad_volume_names_manifest_line_and_field_and_nothing_is_written(tmp_path, image, mask, extra, field, words):
    bad_volumes(tmp_path)
    good = row("ok.nii.gz", "ok_seg.nii.gz", patient="p0")
    with pytest.raises(ValueError, match=rf"m.csv:3: {field}: .*{words}"):
        built(tmp_path, [good, row(image, mask, **extra)])
    assert not os.path.exists(tmp_path / "out") and not [p for p in os.listdir(tmp_path) if p.startswith(".build-")]


def test_volumes_without_the_extra_name_the_pip_command(tmp_path, monkeypatch):
    image, _ = brain()
    sitk.WriteImage(volume(image), str(tmp_path / "v.nii.gz"))
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"pip install -r requirements-volumes.txt"):
        built(tmp_path, [row("v.nii.gz", anomaly="no", pathology="")])


def test_a_volume_without_a_lesion_gives_normal_slices(tmp_path):
    image, _ = brain()
    sitk.WriteImage(volume(image), str(tmp_path / "v.nrrd"))
    summary, records = built(tmp_path, [row("v.nrrd", anomaly="no", pathology="")], normal_slices=3)
    anomaly = [r for r in records if r["task"] == "anomaly"]
    assert len(anomaly) == 3 and all(r["options"][data.LETTERS.index(r["answer"])] == "Normal" for r in anomaly)
    assert {r["patient"] for r in records} == {"p1"} and summary["volumes"]["slices"] == 3


def test_a_volume_whose_mask_holds_no_lesion_label_gives_normal_slices(tmp_path):
    """LiTS: 13 livers hold no tumour (label 1 only). Such a volume gives normal slices; only labels that match nothing
    in any volume of the manifest are an error, named once."""
    image, labels = brain()
    tumour = labels.copy() * 2  # 2: the tumour, on slices 3-6
    tumour[1:8, 14:30, 14:30] = np.where(tumour[1:8, 14:30, 14:30] == 0, 1, tumour[1:8, 14:30, 14:30])  # 1: liver
    liver_only = np.where(tumour == 2, 1, tumour)
    for name, a in (("v.nii.gz", image), ("t.nii.gz", tumour), ("l.nii.gz", liver_only)):
        sitk.WriteImage(volume(a), str(tmp_path / name))
    summary, records = built(tmp_path, [row("v.nii.gz", "t.nii.gz", patient="p1", lesion_labels="2"),
                                        row("v.nii.gz", "l.nii.gz", patient="p2", lesion_labels="2")])
    answers = {(r["patient"], r["options"][data.LETTERS.index(r["answer"])]) for r in records if r["task"] == "anomaly"}
    assert ("p1", "Abnormal") in answers and ("p2", "Abnormal") not in answers and ("p2", "Normal") in answers
    (tmp_path / "out").rename(tmp_path / "first")
    with pytest.raises(ValueError, match=r"m.csv: lesion_labels: \[7\] match nothing in any of its 2 label volumes, "
                                         r"whose labels are \[1, 2\]") as error:
        built(tmp_path, [row("v.nii.gz", "t.nii.gz", patient="p1", lesion_labels="7"),
                         row("v.nii.gz", "l.nii.gz", patient="p2", lesion_labels="7")])
    assert str(error.value).count("match nothing") == 1 and not os.path.exists(tmp_path / "out")


def test_the_square_pixel_resample_fills_outside_the_grid_with_the_volumes_minimum(tmp_path):
    """Columns of 0.5 mm and rows of 1 mm: the rows are resampled to 0.5 mm, and the last one lies beyond the original
    grid. It is air (-1000 HU) as around it, not 0 (water, a grey strip on CT)."""
    ct = np.full((3, 8, 8), -1000, np.int16)
    ct[:, 2:6, 2:6] = 40
    sitk.WriteImage(volume(ct, spacing=(0.5, 1.0, 2.0)), str(tmp_path / "ct.mha"))
    shown = volumes.display(volumes.read(str(tmp_path / "ct.mha")))
    assert shown.shape == (3, 16, 8) and shown[:, -1].max() == -1000
