"""Each recipe on a small fixture laid out as its source is downloaded (names, folders, label values and files, header
orientation), built into a MedAD-style set; several recipes into one set; a root without the files."""
import csv
import os

import numpy as np
import pytest
from helpers import volume
from PIL import Image

import build
import data
import recipes

sitk = pytest.importorskip("SimpleITK")
UPPER_LEFT, LOWER_RIGHT = (slice(2, 9), slice(2, 9)), (slice(22, 30), slice(22, 30))  # rows, cols of a 32 px image


def picture(path, size=32, mode="RGB", lesion=None, value=230):
    """A 2D image with tissue and, optionally, a bright lesion at `lesion` (rows, cols)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.full((size, size), 90, np.uint8)
    if lesion:
        a[lesion] = value
    Image.fromarray(a).convert(mode).save(path)


def mask(path, where=None, size=32, value=255, noisy=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.zeros((size, size), np.uint8)
    if where:
        a[where] = value
    if noisy:  # JPEG-like noise below 128
        a = np.maximum(a, (np.arange(size * size).reshape(size, size) % 7).astype(np.uint8) * 5)
    Image.fromarray(a).save(path)


def ct_case(image_path, mask_path, labels=((1, UPPER_LEFT),), lesion_z=(2, 3, 4), ras=True):
    """A small volume and its label volume (labels on slices lesion_z at (rows, cols)), stored RAS as challenge
    NIfTI files are, so that the display must flip it back: rows anterior first, columns the patient's right first."""
    image = np.zeros((7, 32, 32), np.int16)
    image[:, 1:-1, 1:-1] = 40  # tissue in air
    labelled = np.zeros(image.shape, np.uint8)
    for value, (rows, cols) in labels:
        for z in lesion_z:
            labelled[z][rows, cols] = value
    image[labelled > 0] = 120
    for a, path in ((image, image_path), (labelled, mask_path)):
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            img = volume(a, spacing=(1.0, 1.0, 2.0))
            sitk.WriteImage(sitk.Flip(img, [True, True, False]) if ras else img, path)


def write_table(path, header, rows, sep=","):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if sep == ",":
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    else:
        with open(path, "w") as f:
            f.writelines(sep + sep.join(cells) + sep + "\n" for cells in [header, *rows])


# Each fixture writes the layout under `root` and returns what the build must give: {image stem: (anomaly answer,
# pathology answer or None, region or None)}; a volume's slices are checked by their volume's stem.
def brats(root, modality="flair"):
    for case in ("BraTS2021_00000", "BraTS2021_00002"):
        folder = os.path.join(root, "RSNA_ASNR_MICCAI_BraTS2021_TrainingData", case)
        ct_case(os.path.join(folder, f"{case}_{modality}.nii.gz"), os.path.join(folder, f"{case}_seg.nii.gz"),
                labels=((2, UPPER_LEFT), (4, (slice(4, 7), slice(4, 7)))))
        for other in ("t1", "t2", "t1ce" if modality == "flair" else "flair"):  # the other sequences stay unread
            ct_case(os.path.join(folder, f"{case}_{other}.nii.gz"), None)
    return {"BraTS2021_00000_" + modality: ("Abnormal", "Glioma", "Left Upper"),
            "BraTS2021_00002_" + modality: ("Abnormal", "Glioma", "Left Upper")}


def lits(root):
    ct_case(os.path.join(root, "Training Batch 1", "volume-0.nii"), os.path.join(root, "Training Batch 1", "segmentation-0.nii"),
            labels=((1, (slice(10, 30), slice(10, 30))), (2, LOWER_RIGHT)))  # liver, and the tumour in it
    ct_case(os.path.join(root, "volume_pt1", "volume-1.nii"), os.path.join(root, "segmentations", "segmentation-1.nii"),
            labels=((1, (slice(0, 20), slice(0, 20))), (2, UPPER_LEFT)))  # the Kaggle mirror's layout
    return {"volume-0": ("Abnormal", "Tumor", "Right Lower"), "volume-1": ("Abnormal", "Tumor", "Left Upper")}


def atlas(root):
    anat = os.path.join(root, "ATLAS_2", "Training", "R001", "sub-r001s001", "ses-1", "anat")
    stem = "sub-r001s001_ses-1_space-MNI152NLin2009aSym"
    ct_case(os.path.join(anat, f"{stem}_T1w.nii.gz"), os.path.join(anat, f"{stem}_label-L_desc-T1lesion_mask.nii.gz"),
            labels=((1, LOWER_RIGHT),))
    return {f"{stem}_T1w": ("Abnormal", "Infarct", "Right Lower")}


def mosmed(root):
    top = os.path.join(root, "COVID19_1110")
    ct_case(os.path.join(top, "studies", "CT-0", "study_0001.nii.gz"), None)
    ct_case(os.path.join(top, "studies", "CT-1", "study_0255.nii.gz"), os.path.join(top, "masks", "study_0255_mask.nii.gz"),
            labels=((1, UPPER_LEFT),))
    ct_case(os.path.join(top, "studies", "CT-2", "study_0400.nii.gz"), None)  # abnormal, no mask: skipped
    return {"study_0001": ("Normal", None, None), "study_0255": ("Abnormal", "Pneumonia", "Left Upper")}


def busi(root):
    for cls, where in (("benign", UPPER_LEFT), ("malignant", LOWER_RIGHT), ("normal", None)):
        picture(os.path.join(root, cls, f"{cls} (1).png"), lesion=where)
        mask(os.path.join(root, cls, f"{cls} (1)_mask.png"), where)
    mask(os.path.join(root, "benign", "benign (1)_mask_1.png"), (slice(3, 5), slice(10, 12)))  # a second region
    return {"benign (1)": ("Abnormal", "Benign tumor", "Left Upper"),
            "malignant (1)": ("Abnormal", "Malignant tumor", "Right Lower"), "normal (1)": ("Normal", None, None)}


def isic(root):
    picture(os.path.join(root, "ISIC2018_Task1-2_Training_Input", "ISIC_0000000.jpg"), lesion=LOWER_RIGHT)
    mask(os.path.join(root, "ISIC2018_Task1_Training_GroundTruth", "ISIC_0000000_segmentation.png"), LOWER_RIGHT)
    open(os.path.join(root, "ISIC2018_Task1-2_Training_Input", "LICENSE.txt"), "w").write("CC-BY-NC")
    return {"ISIC_0000000": ("Abnormal", None, "Right Lower")}


def kvasir(root):
    picture(os.path.join(root, "Kvasir-SEG", "images", "cju0qkwl35piu0993l0dewei2.jpg"), lesion=UPPER_LEFT)
    mask(os.path.join(root, "Kvasir-SEG", "masks", "cju0qkwl35piu0993l0dewei2.jpg"), UPPER_LEFT, noisy=True)
    return {"cju0qkwl35piu0993l0dewei2": ("Abnormal", "Polyp", "Left Upper")}


def cvc(root):
    picture(os.path.join(root, "CVC-ClinicDB", "Original", "1.tif"), lesion=LOWER_RIGHT)
    mask(os.path.join(root, "CVC-ClinicDB", "Ground Truth", "1.tif"), LOWER_RIGHT)
    return {"1": ("Abnormal", "Polyp", "Right Lower")}


def ph2(root):
    top = os.path.join(root, "PH2Dataset")
    for name, where in (("IMD002", UPPER_LEFT), ("IMD437", LOWER_RIGHT)):
        picture(os.path.join(top, "PH2 Dataset images", name, f"{name}_Dermoscopic_Image", f"{name}.bmp"), lesion=where)
        mask(os.path.join(top, "PH2 Dataset images", name, f"{name}_lesion", f"{name}_lesion.bmp"), where)
    write_table(os.path.join(top, "PH2_dataset.txt"), ["   Name ", " Histological Diagnosis ", " Clinical Diagnosis "],
                [["  IMD002 ", "", "  0  "], ["  IMD437 ", " Melanoma ", "  2  "]], sep="||")
    return {"IMD002": ("Abnormal", "Nevus", "Left Upper"), "IMD437": ("Abnormal", "Melanoma", "Right Lower")}


def idrid(root):
    seg = os.path.join(root, "A. Segmentation")
    picture(os.path.join(seg, "1. Original Images", "a. Training Set", "IDRiD_01.jpg"), lesion=LOWER_RIGHT)
    truth = os.path.join(seg, "2. All Segmentation Groundtruths", "a. Training Set")
    mask(os.path.join(truth, "1. Microaneurysms", "IDRiD_01_MA.tif"), LOWER_RIGHT, value=76)
    mask(os.path.join(truth, "3. Hard Exudates", "IDRiD_01_EX.tif"), (slice(24, 28), slice(24, 28)), value=76)
    mask(os.path.join(truth, "5. Optic Disc", "IDRiD_01_OD.tif"), UPPER_LEFT, value=76)  # anatomy, not lesion
    return {"IDRiD_01": ("Abnormal", "Diabetic retinopathy", "Right Lower")}


def resc(root):
    cube = "P0001_MacularCube512x128_4-25-2013_9-32-13_OD_sn2218_cube_z"
    for n, labels in ((1, [(255, UPPER_LEFT), (191, (slice(4, 6), slice(4, 6)))]), (2, [])):
        picture(os.path.join(root, "Edema_trainingset", "original_images", f"{cube}.img", f"{n}.bmp"), mode="L")
        a = np.zeros((32, 32), np.uint8)
        for value, where in labels:
            a[where] = value
        os.makedirs(os.path.join(root, "Edema_trainingset", "label_images", f"{cube}_labelMark"), exist_ok=True)
        Image.fromarray(a).save(os.path.join(root, "Edema_trainingset", "label_images", f"{cube}_labelMark", f"{n}.bmp"))
    return {"1": ("Abnormal", "Edema", "Left Upper"), "2": ("Normal", None, None)}


def mvfa(root, folder="Brain_AD", pathology="Tumor"):
    top = os.path.join(root, folder, "test")
    picture(os.path.join(top, "good", "img", "00001_60.png"))
    picture(os.path.join(top, "Ungood", "img", "00002_60.png"), lesion=UPPER_LEFT)
    mask(os.path.join(top, "Ungood", "anomaly_mask", "00002_60.png"), UPPER_LEFT)
    return {"00001_60": ("Normal", None, None), "00002_60": ("Abnormal", pathology, "Left Upper")}


def br35h(root):
    picture(os.path.join(root, "yes", "y0.jpg"), lesion=UPPER_LEFT)
    picture(os.path.join(root, "no", "no0.jpg"))
    return {"y0": ("Abnormal", "Tumor", None), "no0": ("Normal", None, None)}


def chestxray8(root):
    for name in ("00000001_000", "00000002_000", "00000003_000"):
        picture(os.path.join(root, "images_001", "images", f"{name}.png"), size=64, mode="L")
    write_table(os.path.join(root, "Data_Entry_2017.csv"),
                ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"],
                [["00000001_000.png", "No Finding", "0", "1"], ["00000002_000.png", "Mass", "0", "2"],
                 ["00000003_000.png", "Effusion|Mass", "0", "3"]])
    write_table(os.path.join(root, "BBox_List_2017.csv"), ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", ""],
                [["00000002_000.png", "Mass", "40.5", "44", "12", "10", "", ""]])  # lower right of 64 px
    return {"00000001_000": ("Normal", None, None), "00000002_000": ("Abnormal", "Mass", "Right Lower")}


def lymphoma(root):
    for cls, n in (("CLL", 1), ("FL", 2), ("MCL", 3)):
        picture(os.path.join(root, cls, f"sj-03-2810_00{n}.tif"))
    return {"sj-03-2810_001": ("Abnormal", "Chronic lymphocytic leukemia", None),
            "sj-03-2810_002": ("Abnormal", "Follicular lymphoma", None),
            "sj-03-2810_003": ("Abnormal", "Mantle cell lymphoma", None)}


def bach(root):
    for cls, stem in (("Normal", "n001"), ("Benign", "b001"), ("InSitu", "is001"), ("Invasive", "iv001")):
        picture(os.path.join(root, "ICIAR2018_BACH_Challenge", "Photos", cls, f"{stem}.tif"))
    return {"n001": ("Normal", None, None), "b001": ("Abnormal", "Benign tumor", None),
            "is001": ("Abnormal", "Carcinoma in situ", None), "iv001": ("Abnormal", "Invasive carcinoma", None)}


FIXTURES = {"brats2021": brats, "brats2021-t1ce": lambda root: brats(root, "t1ce"), "lits": lits, "atlas2": atlas,
            "mosmed": mosmed, "busi": busi, "isic2018": isic, "kvasir-seg": kvasir, "cvc-clinicdb": cvc, "ph2": ph2,
            "idrid": idrid, "resc": resc, "mvfa-brain": mvfa,
            "mvfa-liver": lambda root: mvfa(root, "Liver_AD"), "mvfa-resc": lambda root: mvfa(root, "Retina_RESC_AD", "Edema"), "br35h": br35h, "chestxray8": chestxray8, "lymphoma": lymphoma,
            "bach": bach}


def test_every_recipe_has_a_fixture():
    assert set(FIXTURES) == set(recipes.RECIPES)


def answer_of(records, task):
    found = [r for r in records if r["task"] == task]
    return found[0]["options"][data.LETTERS.index(found[0]["answer"])] if found else None


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_a_recipe_turns_its_layout_into_questions(tmp_path, name):
    root = str(tmp_path / "download")
    expected = FIXTURES[name](root)
    summary = build.build(None, str(tmp_path / "out"), test_frac=0.0, sources=[(name, root)])
    records = data.load_jsonl(str(tmp_path / "out" / "train.jsonl"))
    recipe = recipes.RECIPES[name]
    assert {r["source"] for r in records} == {recipe["row"]["source"]}
    assert {r["modality"] for r in records} == {recipe["row"]["modality"]}
    by_image = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(r)
    volume = any(p.endswith((".nii", ".nii.gz")) for p in recipe["images"])
    for stem, (anomaly, pathology, region) in expected.items():
        mine = {image: rs for image, rs in by_image.items() if f"-{stem}" in os.path.basename(image)}
        assert mine, (stem, list(by_image))
        if volume:  # the slice of largest lesion area (and others) abnormal; a lesion-free slice normal
            answers = {answer_of(rs, "anomaly") for rs in mine.values()}
            assert anomaly in answers and (anomaly == "Normal" or "Normal" in answers)
            lesion = [rs for rs in mine.values() if answer_of(rs, "anomaly") == "Abnormal"]
            assert all(answer_of(rs, "localization") == region and answer_of(rs, "pathology") == pathology for rs in lesion)
        else:
            (rs,) = mine.values()
            assert answer_of(rs, "anomaly") == anomaly and answer_of(rs, "pathology") == pathology
            assert answer_of(rs, "localization") == region
    patients = {r["patient"] for r in records}
    assert all(p.startswith(f"{name}-") for p in patients)
    if name == "mosmed":
        assert summary["skipped_by_recipe"] == {"mosmed": {"abnormal without a mask": 1}}
    if name == "chestxray8":
        assert summary["skipped_by_recipe"] == {"chestxray8": {"no class, or several": 1}}  # two findings: two answers


def test_several_sources_build_one_set_with_distractors_across_them(tmp_path):
    busi(str(tmp_path / "busi"))
    kvasir(str(tmp_path / "kvasir"))
    summary = build.build(None, str(tmp_path / "out"), test_frac=0.0,
                          sources=[("busi", str(tmp_path / "busi")), ("kvasir-seg", str(tmp_path / "kvasir"))])
    assert set(summary["questions_per_source"]) == {"BUSI", "Kvasir-SEG"}
    assert {"Ultrasound", "Endoscopy"} <= set(summary["distractor_sources"]["modality"]["manifest"])


def test_a_root_without_the_files_and_the_list(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--recipe lits --root .*empty: .*found none of \*\*/volume-\*\.nii"):
        build.build(None, str(tmp_path / "out"), sources=[("lits", str(tmp_path / "empty"))])
    assert not os.path.exists(tmp_path / "out")
    build.main(["--recipe", "list"])
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in recipes.RECIPES) and "DDTI" in listing and "layout from" in listing
    with pytest.raises(SystemExit, match="unknown recipe 'brats'"):
        build.main(["--recipe", "brats", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
