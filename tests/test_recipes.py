"""Each recipe on a small fixture laid out as its source is downloaded, mirrors included (names, folders, label values
and files with their real headers, header orientation), built into a MedAD-style set: what it answers, what it skips
and why, and that no patient falls on both sides of the split; several recipes into one set; a root without the
files, a label file missing."""
import csv
import glob
import json
import os
import re
import shutil

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
    validation = os.path.join(root, "RSNA_ASNR_MICCAI_BraTS2021_ValidationData", "BraTS2021_00001")
    ct_case(os.path.join(validation, f"BraTS2021_00001_{modality}.nii.gz"), None)  # no _seg: labels not released
    return {"BraTS2021_00000_" + modality: ("Abnormal", "Glioma", "Left Upper"),
            "BraTS2021_00002_" + modality: ("Abnormal", "Glioma", "Left Upper")}


def lits(root):
    ct_case(os.path.join(root, "Training Batch 1", "volume-0.nii"), os.path.join(root, "Training Batch 1", "segmentation-0.nii"),
            labels=((1, (slice(10, 30), slice(10, 30))), (2, LOWER_RIGHT)))  # liver, and the tumour in it
    ct_case(os.path.join(root, "volume_pt1", "volume-1.nii"), os.path.join(root, "segmentations", "segmentation-1.nii"),
            labels=((1, (slice(0, 20), slice(0, 20))), (2, UPPER_LEFT)))  # the Kaggle mirror's layout
    ct_case(os.path.join(root, "Training Batch 2", "volume-32.nii"), os.path.join(root, "Training Batch 2",
            "segmentation-32.nii"), labels=((1, (slice(10, 30), slice(10, 30))),))  # a liver without tumour
    return {"volume-0": ("Abnormal", "Tumor", "Right Lower"), "volume-1": ("Abnormal", "Tumor", "Left Upper"),
            "volume-32": ("Normal", None, None)}


def atlas(root):
    anat = os.path.join(root, "ATLAS_2", "Training", "R001", "sub-r001s001", "ses-1", "anat")
    stem = "sub-r001s001_ses-1_space-MNI152NLin2009aSym"
    ct_case(os.path.join(anat, f"{stem}_T1w.nii.gz"), os.path.join(anat, f"{stem}_label-L_desc-T1lesion_mask.nii.gz"),
            labels=((1, LOWER_RIGHT),))
    hidden = os.path.join(root, "ATLAS_2", "Testing", "R005", "sub-r005s001", "ses-1", "anat")  # masks withheld
    ct_case(os.path.join(hidden, "sub-r005s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz"), None)
    return {f"{stem}_T1w": ("Abnormal", "Infarct", "Right Lower")}


def mosmed(root):
    top = os.path.join(root, "COVID19_1110")
    ct_case(os.path.join(top, "studies", "CT-0", "study_0001.nii.gz"), None)
    ct_case(os.path.join(top, "studies", "CT-1", "study_0255.nii.gz"), os.path.join(top, "masks", "study_0255_mask.nii.gz"),
            labels=((1, UPPER_LEFT),))
    for n, study in ((2, "study_0400"), (3, "study_1000"), (4, "study_1109")):  # abnormal, no mask: skipped
        ct_case(os.path.join(top, "studies", f"CT-{n}", f"{study}.nii.gz"), None)
    return {"study_0001": ("Normal", None, None), "study_0255": ("Abnormal", "Pneumonia", "Left Upper")}


def busi(root):
    for cls, where in (("benign", UPPER_LEFT), ("malignant", LOWER_RIGHT), ("normal", None)):
        picture(os.path.join(root, cls, f"{cls} (1).png"), lesion=where)
        mask(os.path.join(root, cls, f"{cls} (1)_mask.png"), where)
        Image.open(os.path.join(root, cls, f"{cls} (1)_mask.png")).convert("1").save(
            os.path.join(root, cls, f"{cls} (1)_mask.png"))  # most of BUSI's masks are 1-bit
    mask(os.path.join(root, "benign", "benign (1)_mask_1.png"), (slice(3, 5), slice(10, 12)))  # a second region
    # a few are RGBA with an opaque alpha channel: the lesion is in the colour, not in the alpha
    Image.open(os.path.join(root, "malignant", "malignant (1)_mask.png")).convert("RGBA").save(
        os.path.join(root, "malignant", "malignant (1)_mask.png"))
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


def cvc(root, mirror=True):
    """The Kaggle mirror (balraj98/cvcclinicdb): every frame in PNG/ and TIF/, metadata.csv mapping frames to their
    videos; or the official release, Original/ and 'Ground Truth'/ TIFFs. Frames 1, 2 and 25 are video 1, 26 video 2."""
    frames = {1: LOWER_RIGHT, 2: LOWER_RIGHT, 25: UPPER_LEFT, 26: UPPER_LEFT}
    kinds = (("PNG", "png"), ("TIF", "tif")) if mirror else (("", "tif"),)
    for folder, ext in kinds:
        for n, where in frames.items():
            picture(os.path.join(root, folder, "Original", f"{n}.{ext}"), lesion=where)
            mask(os.path.join(root, folder, "Ground Truth", f"{n}.{ext}"), where)
    if mirror:
        # the columns its readers show (dataset-ninja/cvc-612 and Kaggle notebooks): no tif_image_path
        write_table(os.path.join(root, "metadata.csv"), ["frame_id", "sequence_id", "png_image_path", "png_mask_path"],
                    [[str(n), "1" if n < 26 else "2", f"PNG/Original/{n}.png", f"PNG/Ground Truth/{n}.png"] for n in frames])
    return {str(n): ("Abnormal", "Polyp", "Right Lower" if where == LOWER_RIGHT else "Left Upper")
            for n, where in frames.items()}


def ph2(root):
    top = os.path.join(root, "PH2Dataset")
    for name, where in (("IMD002", UPPER_LEFT), ("IMD437", LOWER_RIGHT)):
        picture(os.path.join(top, "PH2 Dataset images", name, f"{name}_Dermoscopic_Image", f"{name}.bmp"), lesion=where)
        mask(os.path.join(top, "PH2 Dataset images", name, f"{name}_lesion", f"{name}_lesion.bmp"), where)
    write_table(os.path.join(top, "PH2_dataset.txt"), ["   Name ", " Histological Diagnosis ", " Clinical Diagnosis "],
                [["  IMD002 ", "", "  0  "], ["  IMD437 ", " Melanoma ", "  2  "]], sep="||")
    return {"IMD002": ("Abnormal", "Nevus", "Left Upper"), "IMD437": ("Abnormal", "Melanoma", "Right Lower")}


def idrid_download(root):
    """IDRiD as downloaded whole: A. Segmentation (masks), B. Disease Grading (a grading CSV a split, with its real
    header: a trailing space, trailing empty columns) and C. Localization, B's and C's images of the same names."""
    seg = os.path.join(root, "A. Segmentation")
    picture(os.path.join(seg, "1. Original Images", "a. Training Set", "IDRiD_01.jpg"), lesion=LOWER_RIGHT)
    truth = os.path.join(seg, "2. All Segmentation Groundtruths", "a. Training Set")
    mask(os.path.join(truth, "1. Microaneurysms", "IDRiD_01_MA.tif"), LOWER_RIGHT, value=76)
    mask(os.path.join(truth, "3. Hard Exudates", "IDRiD_01_EX.tif"), (slice(24, 28), slice(24, 28)), value=76)
    mask(os.path.join(truth, "5. Optic Disc", "IDRiD_01_OD.tif"), UPPER_LEFT, value=76)  # anatomy, not lesion
    picture(os.path.join(seg, "1. Original Images", "b. Testing Set", "IDRiD_55.jpg"))  # its masks not given here
    grading = os.path.join(root, "B. Disease Grading")
    for split, grades in (("a. Training Set", ("0", "3")), ("b. Testing Set", ("2",))):
        for n, grade in enumerate(grades, 1):
            for part in (grading, os.path.join(root, "C. Localization")):
                picture(os.path.join(part, "1. Original Images", split, f"IDRiD_{n:03d}.jpg"))
    header = ["Image name", "Retinopathy grade", "Risk of macular edema ", "", ""]
    write_table(os.path.join(grading, "2. Groundtruths", "a. IDRiD_Disease Grading_Training Labels.csv"), header,
                [["IDRiD_001", "0", "0", "", ""], ["IDRiD_002", "3", "2", "", ""]])
    write_table(os.path.join(grading, "2. Groundtruths", "b. IDRiD_Disease Grading_Testing Labels.csv"), header[:3],
                [["IDRiD_001", "2", "1"]])


def idrid(root):
    idrid_download(root)
    return {"IDRiD_01": ("Abnormal", "Diabetic retinopathy", "Right Lower")}


def idrid_grading(root):
    idrid_download(root)
    return {"IDRiD_001": None,  # in both splits: test_idrid_grading_reads_each_split_with_its_own_file
            "IDRiD_002": ("Abnormal", "Diabetic retinopathy", None)}


RESC_CUBES = {"P0012": "P0012_MacularCube512x128_8-7-2014_13-29-39_OS_sn27946_cube_z",
              "PC008": "PC008_MacularCube512x128_9-12-2013_10-50-5_OD_sn9624_cube_z"}


def resc(root):
    """Cubes of patients named P0012_... and PC008_..., slices N.bmp; Edema_testset ships original_images only."""
    for cube, (lesion, other) in zip(RESC_CUBES.values(), ((1, 2), (3, 4))):
        for n in (lesion, other):
            labels = [(255, UPPER_LEFT), (191, (slice(4, 6), slice(4, 6)))] if n == lesion else []
            picture(os.path.join(root, "Edema_trainingset", "original_images", f"{cube}.img", f"{n}.bmp"), mode="L")
            a = np.zeros((32, 32), np.uint8)
            for value, where in labels:
                a[where] = value
            folder = os.path.join(root, "Edema_trainingset", "label_images", f"{cube}_labelMark")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(a).save(os.path.join(folder, f"{n}.bmp"))
    test_cube = "PC002_MacularCube512x128_7-16-2013_10-12-56_OD_sn6522_cube_z"
    picture(os.path.join(root, "Edema_testset", "original_images", f"{test_cube}.img", "1.bmp"), mode="L")
    return {"1": ("Abnormal", "Edema", "Left Upper"), "2": ("Normal", None, None), "3": ("Abnormal", "Edema", "Left Upper"),
            "4": ("Normal", None, None)}


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
    # NIH's current file (the Kaggle mirror keeps Data_Entry_2017.csv), its header as released
    write_table(os.path.join(root, "Data_Entry_2017_v2020.csv"),
                ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                 "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"],
                [["00000001_000.png", "No Finding", "0", "1", "57", "M", "PA", "64", "64", "0.143", "0.143"],
                 ["00000002_000.png", "Mass", "0", "2", "81", "M", "PA", "64", "64", "0.143", "0.143"],
                 ["00000003_000.png", "Effusion|Mass", "0", "3", "74", "F", "PA", "64", "64", "0.143", "0.143"]])
    with open(os.path.join(root, "Data_Entry_2017_v2020.csv"), "a") as f:
        f.write("00000004_000.png,Nodule,0,4,60,F,PA,64,64,0.143,0.143\n")  # an image of another part of the download
    # NIH's file as released (mlmed/torchxrayvision torchxrayvision/data/BBox_List_2017.csv.gz): a header of nine cells
    # (Bbox [x,y,w,h] split at its commas, then ',,,'), rows of six
    with open(os.path.join(root, "BBox_List_2017.csv"), "w") as f:
        f.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                "00000002_000.png,Mass,40.5084745762712,44,12,10.1864406779661\n"  # lower right of 64 px
                "00000003_000.png,Mass,2,2,10,10\n00000099_000.png,Nodule,5,5,8,8\n")  # an image skipped, one absent
    return {"00000001_000": ("Normal", None, None), "00000002_000": ("Abnormal", "Mass", "Right Lower")}


LYMPHOMA = {"CLL": ["sj-03-2810_001", "sj-03-2810_002", "sj-03-476_009"], "FL": ["sj-05-1881-R1_018", "sj-05-1881-R2_003"],
            "MCL": ["sj-04-3077-R2_003", "sj-05-768_011"]}


def lymphoma(root):
    """Crops named by their specimen (sj-03-2810_001.tif), some with an -R part (sj-05-1881-R1_018.tif)."""
    names = {"CLL": "Chronic lymphocytic leukemia", "FL": "Follicular lymphoma", "MCL": "Mantle cell lymphoma"}
    for cls, stems in LYMPHOMA.items():
        for stem in stems:
            picture(os.path.join(root, cls, f"{stem}.tif"))
    return {stem: ("Abnormal", names[cls], None) for cls, stems in LYMPHOMA.items() for stem in stems}


def ddti(root):
    """DDTI's raw release: N.xml beside N_M.jpg. Case 1: image 1 with one nodule, image 2 without a mark; case 2: one
    image with two polygons in one <svg>; case 197: its <svg> cut short."""
    top = os.path.join(root, "DDTI")
    cases = {1: {1: [[(2, 2), (9, 2), (9, 9), (2, 9)]]}, 2: {1: [[(20, 20), (29, 20), (29, 29)], [(22, 2), (26, 2), (26, 6)]]}}
    for case, images in cases.items():
        marks = "".join(f"<mark><image>{m}</image><svg>{json.dumps([{'points': [{'x': x, 'y': y} for x, y in poly], 'annotation': {}, 'regionType': 'freehand'} for poly in polys])}</svg></mark>"
                        for m, polys in images.items())
        os.makedirs(top, exist_ok=True)
        open(os.path.join(top, f"{case}.xml"), "w").write(f"<?xml version='1.0' encoding='utf-8'?><case><number>{case}</number>"
                                                          f"<age>49</age><sex>F</sex><tirads>4a</tirads>{marks}</case>")
    for name in ("1_1", "1_2", "2_1", "197_1"):
        picture(os.path.join(top, f"{name}.jpg"))
    open(os.path.join(top, "197.xml"), "w").write('<case><number>197</number><tirads></tirads><mark><image>1</image>'
                                                  '<svg>[{"points": [{"x": 3, "y": 3}, {"x": 9, "y": 3}, {"x": 9, "y": 9}], "annotation": {}, "regionTy'
                                                  '</svg></mark></case>')
    return {"1_1": ("Abnormal", "Nodule", "Left Upper"), "2_1": ("Abnormal", "Nodule", "Right Lower")}


def bach(root):
    for cls, stem in (("Normal", "n001"), ("Benign", "b001"), ("InSitu", "is001"), ("Invasive", "iv001")):
        picture(os.path.join(root, "ICIAR2018_BACH_Challenge", "Photos", cls, f"{stem}.tif"))
    return {"n001": ("Normal", None, None), "b001": ("Abnormal", "Benign tumor", None),
            "is001": ("Abnormal", "Carcinoma in situ", None), "iv001": ("Abnormal", "Invasive carcinoma", None)}


FIXTURES = {"brats2021": brats, "brats2021-t1ce": lambda root: brats(root, "t1ce"), "lits": lits, "atlas2": atlas,
            "mosmed": mosmed, "busi": busi, "isic2018": isic, "kvasir-seg": kvasir, "cvc-clinicdb": cvc, "ph2": ph2,
            "idrid": idrid, "idrid-grading": idrid_grading, "resc": resc, "mvfa-brain": mvfa, "ddti": ddti,
            "mvfa-liver": lambda root: mvfa(root, "Liver_AD"), "mvfa-resc": lambda root: mvfa(root, "Retina_RESC_AD", "Edema"), "br35h": br35h, "chestxray8": chestxray8, "lymphoma": lymphoma,
            "bach": bach}


def test_every_recipe_has_a_fixture():
    assert set(FIXTURES) == set(recipes.RECIPES)


def answer_of(records, task):
    found = [r for r in records if r["task"] == task]
    return found[0]["options"][data.LETTERS.index(found[0]["answer"])] if found else None


SKIPPED = {  # what each fixture holds that its recipe must not answer, by reason
    **{name: {recipes.UNLABELLED: 1} for name in ("brats2021", "brats2021-t1ce", "atlas2", "resc", "idrid")},
    "mosmed": {"abnormal without a mask": 3},
    "chestxray8": {"no class, or several": 1,  # two findings: two right answers
                   "a row of Data_Entry_2017_v2020.csv naming no image of the download": 1,
                   "a box of BBox_List_2017.csv on an image not in the download": 1,
                   "a box of BBox_List_2017.csv on an image skipped or called normal": 1},
    "cvc-clinicdb": {"the same image again (another format or folder of the download)": 4},  # PNG/ beside TIF/
    "ddti": {"no polygon for this image (unlabelled)": 1, "a polygon cut short or unreadable (<svg> JSON)": 1},
}
PATIENTS = {  # where several images are one patient
    "cvc-clinicdb": {"cvc-clinicdb-seq1", "cvc-clinicdb-seq2"},  # 29 videos of near-identical frames: one a patient
    "resc": {"resc-P0012", "resc-PC008"},  # a cube's slices (numbered 1, 2, ... in every cube) are one patient
    "lymphoma": {f"lymphoma-{s}" for s in ("sj-03-2810", "sj-03-476", "sj-05-1881", "sj-04-3077", "sj-05-768")},
    "ddti": {"ddti-1", "ddti-2"},
}


def source_stem(image):
    """The source image or volume a built image comes from (built: NNNNNN-stem.png, NNNNNN-NNNNNN-stem-zNNN.png)."""
    return re.sub(r"-z\d{3}$", "", re.sub(r"^(\d{6}-)+", "", os.path.basename(image).removesuffix(".png")))


def images_of(by_image, stem):
    return {image: rs for image, rs in by_image.items() if source_stem(image) == stem}


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
    for stem, want in expected.items():
        mine = images_of(by_image, stem)
        assert mine, (stem, list(by_image))
        if want is None:
            continue
        anomaly, pathology, region = want
        if volume:  # the slice of largest lesion area (and others) abnormal; a lesion-free slice normal
            answers = {answer_of(rs, "anomaly") for rs in mine.values()}
            assert anomaly in answers and (anomaly == "Normal" or "Normal" in answers)
            assert anomaly == "Abnormal" or answers == {"Normal"}  # a volume without a lesion: normal slices only
            lesion = [rs for rs in mine.values() if answer_of(rs, "anomaly") == "Abnormal"]
            assert all(answer_of(rs, "localization") == region and answer_of(rs, "pathology") == pathology for rs in lesion)
        else:
            (rs,) = mine.values()
            assert answer_of(rs, "anomaly") == anomaly and answer_of(rs, "pathology") == pathology
            assert answer_of(rs, "localization") == region
    assert {source_stem(r["image"]) for r in records} == set(expected)  # nothing else was built: what the fixture holds besides is skipped
    patients = {r["patient"] for r in records}
    assert all(p.startswith(f"{name}-") for p in patients)
    assert name not in PATIENTS or patients == PATIENTS[name]
    assert summary.get("dropped", {}).get(name, {}) == SKIPPED.get(name, {})
    found = {p for pattern in recipe["images"] for p in glob.glob(os.path.join(glob.escape(root), pattern), recursive=True)
             if not re.search(recipe.get("exclude", "$^"), p) and re.search(recipe.get("select", ""), p)}
    images_dropped = sum(n for why, n in SKIPPED.get(name, {}).items() if not re.search(r"^a (row|box) of|mask file", why))
    built = {source_stem(r["image"]) if volume else r["image"] for r in records}
    assert len(found) == len(built) + images_dropped  # every image the download holds: built, or dropped by reason


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_no_patient_is_on_both_sides_of_the_split(tmp_path, name):
    FIXTURES[name](str(tmp_path / "download"))
    summary = build.build(None, str(tmp_path / "out"), test_frac=0.5, seed=1, sources=[(name, str(tmp_path / "download"))])
    train, test = (data.load_jsonl(str(tmp_path / "out" / f"{side}.jsonl")) if os.path.getsize(
        tmp_path / "out" / f"{side}.jsonl") else [] for side in ("train", "test"))
    assert not {r["patient"] for r in train} & {r["patient"] for r in test}
    (source,) = summary["split_by_source"]
    for side, rs in (("train", train), ("test", test)):
        assert summary["split_by_source"][source][side] == {
            "patients": len({r["patient"] for r in rs}), "images": len({r["image"] for r in rs}), "questions": len(rs)}


def test_idrid_grading_reads_each_split_with_its_own_file(tmp_path):
    """IDRiD's training and testing sets reuse the names IDRiD_001...: each split's grades are its own file's."""
    idrid_download(str(tmp_path / "IDRiD"))
    build.build(None, str(tmp_path / "out"), test_frac=0.0, sources=[("idrid-grading", str(tmp_path / "IDRiD"))])
    records = data.load_jsonl(str(tmp_path / "out" / "train.jsonl"))
    first = {r["patient"]: answer_of(rs, "anomaly") for rs in [[x for x in records if x["image"] == image]
             for image in images_of({r["image"]: 0 for r in records}, "IDRiD_001")] for r in rs[:1]}
    assert sorted(first.values()) == ["Abnormal", "Normal"] and len(first) == 2  # two eyes, two patients


def test_cvc_clinicdbs_official_release_groups_frames_by_the_published_videos(tmp_path):
    cvc(str(tmp_path / "CVC-ClinicDB"), mirror=False)
    build.build(None, str(tmp_path / "out"), test_frac=0.0, sources=[("cvc-clinicdb", str(tmp_path / "CVC-ClinicDB"))])
    records = data.load_jsonl(str(tmp_path / "out" / "train.jsonl"))
    by_frame = {source_stem(r["image"]): r["patient"] for r in records}
    assert by_frame == {"1": "cvc-clinicdb-seq1", "2": "cvc-clinicdb-seq1", "25": "cvc-clinicdb-seq1",
                        "26": "cvc-clinicdb-seq2"}


def test_chestxray8_reads_the_kaggle_mirrors_label_file_too(tmp_path):
    """The Kaggle mirror keeps Data_Entry_2017.csv, each line ending in a comma (an empty 12th column)."""
    chestxray8(str(tmp_path / "cxr"))
    os.remove(tmp_path / "cxr" / "Data_Entry_2017_v2020.csv")
    with open(tmp_path / "cxr" / "Data_Entry_2017.csv", "w") as f:
        f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
        f.write("00000001_000.png,No Finding,0,1,58,M,PA,64,64,0.143,0.143,\n00000002_000.png,Mass,0,2,81,M,PA,64,64,0.143,0.143,\n")
    summary = build.build(None, str(tmp_path / "out"), test_frac=0.0, sources=[("chestxray8", str(tmp_path / "cxr"))])
    assert summary["images"] == 2 and summary["dropped"]["chestxray8"]["no class, or several"] == 1


def test_a_lits_download_whose_labels_match_no_volume_is_one_error(tmp_path):
    ct_case(os.path.join(tmp_path, "LiTS", "volume-32.nii"), os.path.join(tmp_path, "LiTS", "segmentation-32.nii"),
            labels=((1, UPPER_LEFT),))
    ct_case(os.path.join(tmp_path, "LiTS", "volume-34.nii"), os.path.join(tmp_path, "LiTS", "segmentation-34.nii"),
            labels=((1, LOWER_RIGHT),))
    with pytest.raises(SystemExit, match=r"--recipe lits: lesion_labels: \[2\] match nothing in any of its 2 label "
                                         r"volumes, whose labels are \[1\]"):
        build.main(["--recipe", "lits", "--root", str(tmp_path / "LiTS"), "--out", str(tmp_path / "out")])


def test_several_sources_build_one_set_with_distractors_across_them(tmp_path):
    busi(str(tmp_path / "busi"))
    kvasir(str(tmp_path / "kvasir"))
    summary = build.build(None, str(tmp_path / "out"), test_frac=0.0,
                          sources=[("busi", str(tmp_path / "busi")), ("kvasir-seg", str(tmp_path / "kvasir"))])
    assert set(summary["questions_per_source"]) == {"BUSI", "Kvasir-SEG"}
    assert {"Ultrasound", "Endoscopy"} <= set(summary["distractor_sources"]["modality"]["manifest"])


def test_a_root_without_the_files_a_missing_label_file_and_the_list(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"--recipe lits --root .*empty: found none of \*\*/volume-\*\.nii") as error:
        build.main(["--recipe", "lits", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert "Traceback" not in str(error.value) and not os.path.exists(tmp_path / "out")
    chestxray8(str(tmp_path / "cxr"))
    os.remove(tmp_path / "cxr" / "Data_Entry_2017_v2020.csv")
    with pytest.raises(SystemExit, match=r"--recipe chestxray8 --root .*cxr: no \*\*/Data_Entry_2017_v2020.csv or "
                                         r"\*\*/Data_Entry_2017.csv under it"):
        build.main(["--recipe", "chestxray8", "--root", str(tmp_path / "cxr"), "--out", str(tmp_path / "out")])
    open(tmp_path / "cxr" / "Data_Entry_2017.csv", "w").write("Image Index,Labels\n00000001_000.png,Mass\n")
    with pytest.raises(SystemExit, match=r"Data_Entry_2017.csv: no column 'Finding Labels' \(columns: Image Index, Labels\)"):
        build.main(["--recipe", "chestxray8", "--root", str(tmp_path / "cxr"), "--out", str(tmp_path / "out")])
    build.main(["--recipe", "list"])
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in recipes.RECIPES) and "PediDemi" in listing and "layout from" in listing
    assert "skipped" in listing  # what each recipe leaves out, and why
    with pytest.raises(SystemExit, match="unknown recipe 'brats'"):
        build.main(["--recipe", "brats", "--root", str(tmp_path), "--out", str(tmp_path / "o")])


# ---- real downloads that went wrong (issue 41): each fails on the builder before it ----

def build_fails(*args, match):
    with pytest.raises(SystemExit, match=match) as error:
        build.main(list(args))
    assert "Traceback" not in str(error.value)


def test_busi_with_masks_missing_or_a_class_spelled_otherwise_is_never_silent(tmp_path):
    root = str(tmp_path / "Dataset_BUSI_with_GT")
    busi(root)
    os.remove(os.path.join(root, "malignant", "malignant (1)_mask.png"))
    summary = build.build(None, str(tmp_path / "out"), test_frac=0.0, sources=[("busi", root)])
    assert summary["dropped"] == {"busi": {"abnormal, its mask file missing: no localization question": 1}}
    records = data.load_jsonl(str(tmp_path / "out" / "train.jsonl"))
    malignant = [r for r in records if "malignant" in r["image"]]
    assert answer_of(malignant, "anomaly") == "Abnormal" and answer_of(malignant, "localization") is None
    for cls in ("benign", "normal"):
        for f in glob.glob(os.path.join(root, cls, "*_mask*.png")):
            os.remove(f)
    build_fails("--recipe", "busi", "--root", root, "--out", str(tmp_path / "o"),
                match=r"none of its 2 abnormal images has its mask file \(for the first, benign/benign \(1\)_mask\*.png\)")
    busi(root)
    os.rename(os.path.join(root, "malignant"), os.path.join(root, "Malignant"))
    build_fails("--recipe", "busi", "--root", root, "--out", str(tmp_path / "o"),
                match=r"found no image of class 'malignant' .*: the folder is spelled 'Malignant' here")
    shutil.rmtree(os.path.join(root, "Malignant"))
    build_fails("--recipe", "busi", "--root", root, "--out", str(tmp_path / "o"),
                match=r"found no image of class 'malignant' .*is that part of the download missing")


def test_kvasir_without_its_masks_folder_or_one_mask(tmp_path):
    root = str(tmp_path / "kvasir")
    kvasir(root)
    picture(os.path.join(root, "Kvasir-SEG", "images", "cju0roawvklrq0799vmjorwfv.jpg"), lesion=UPPER_LEFT)
    summary = build.build(None, str(tmp_path / "out"), test_frac=0.0, sources=[("kvasir-seg", root)])
    assert summary["dropped"] == {"kvasir-seg": {"abnormal, its mask file missing: no localization question": 1}}
    shutil.rmtree(os.path.join(root, "Kvasir-SEG", "masks"))
    build_fails("--recipe", "kvasir-seg", "--root", root, "--out", str(tmp_path / "o"),
                match=r"--recipe kvasir-seg --root .*kvasir: none of its 2 abnormal images has its mask file \(for the "
                      r"first, Kvasir-SEG/masks/cju0qkwl35piu0993l0dewei2.jpg\)")


def test_label_files_a_spreadsheet_saved_or_cut_short_are_named(tmp_path):
    root = str(tmp_path / "cxr")
    chestxray8(root)
    entry = os.path.join(root, "Data_Entry_2017_v2020.csv")
    text = open(entry).read()
    open(entry, "w", encoding="utf-16").write(text)
    build_fails("--recipe", "chestxray8", "--root", root, "--out", str(tmp_path / "o"),
                match=r"Data_Entry_2017_v2020.csv: UTF-16 text .*save it as UTF-8")
    open(entry, "w", encoding="cp1252").write(text.replace("No Finding", "No Finding", 1).replace("57,M", "57,Mé", 1))
    build_fails("--recipe", "chestxray8", "--root", root, "--out", str(tmp_path / "o"),
                match=r"Data_Entry_2017_v2020.csv:2: -: not UTF-8")
    open(entry, "w").write(text.replace(",", ";"))  # a spreadsheet in a locale whose separator is ';'
    summary = build.build(None, str(tmp_path / "semicolons"), test_frac=0.0, sources=[("chestxray8", root)])
    assert summary["images"] == 2 and summary["dropped"]["chestxray8"] == SKIPPED["chestxray8"]
    open(entry, "w").write(text + "00000005_000.png\n")  # a row cut short
    build_fails("--recipe", "chestxray8", "--root", root, "--out", str(tmp_path / "o"),
                match=r"Data_Entry_2017_v2020.csv:6: 1 cells, where the columns read need 2")


def test_the_output_folder_is_never_mixed_and_a_root_may_hold_brackets(tmp_path, capsys):
    root = str(tmp_path / "BUSI [v1]")
    expected = busi(root)
    out = str(tmp_path / "out")
    build.main(["--recipe", "busi", "--root", root, "--out", out, "--test-frac", "0"])
    before = sorted(os.listdir(os.path.join(out, "images")))
    assert {source_stem(i) for i in before} == set(expected)
    kvasir(str(tmp_path / "kvasir"))
    build_fails("--recipe", "kvasir-seg", "--root", str(tmp_path / "kvasir"), "--out", out, match="holds files already")
    assert sorted(os.listdir(os.path.join(out, "images"))) == before
    build.main(["--recipe", "kvasir-seg", "--root", str(tmp_path / "kvasir"), "--out", out, "--overwrite"])
    assert {source_stem(i) for i in os.listdir(os.path.join(out, "images"))} == {"cju0qkwl35piu0993l0dewei2"}  # no stale
    assert not os.path.exists(out + ".partial")
    build_fails("--recipe", "busi", "--root", root, "--out", str(tmp_path), "--overwrite",
                match=r"holds an input")  # never cleared: it holds the download
    open(tmp_path / "a_file", "w").write("x")
    build_fails("--recipe", "busi", "--root", root, "--out", str(tmp_path / "a_file"), match="is a file: give a folder")
    os.symlink("..", os.path.join(root, "benign", "up"))  # a folder linked into itself
    summary = build.build(None, str(tmp_path / "looped"), test_frac=0.0, sources=[("busi", root)])
    assert summary["images"] == len(expected)
    capsys.readouterr()
    os.remove(os.path.join(root, "malignant", "malignant (1)_mask.png"))
    build.main(["--recipe", "busi", "--root", root, "--out", str(tmp_path / "printed")])
    assert "dropped from --recipe busi: 1 abnormal, its mask file missing" in capsys.readouterr().out
