"""The public sources of MedAD-38K as they are downloaded, turned into manifest rows: one table entry a source.

Imports data.py only (the mask reader, so that an anomaly answer follows the mask as training reads it).

    python build.py --recipe brats2021 --root ~/data/BraTS2021 --recipe lits --root ~/data/LiTS --out medad_like
    python build.py --recipe list                                    # which exist, what each expects and where from

A recipe is data: the image files (globs under --root), how a mask's path follows from its image's (regex
substitutions; several matches are one mask), the patient id (a regex on the path), the source's modality, anatomy
and pathology, which images are normal (a class from the path or a label file), which mask values are lesion, the CT
window, and boxes drawn as masks where a source has boxes. Each cites the page, paper or conversion script its layout
comes from; tests/test_recipes.py builds a small fixture of each layout.
"""
import csv
import glob
import os
import re

import numpy as np
from PIL import Image

from data import read_mask

BRATS = "MIC-DKFZ/nnUNet nnunetv2/dataset_conversion/Dataset137_BraTS21.py; Baid et al. 2021 (arXiv 2107.02314)"
RECIPES = {
    "brats2021": dict(
        about="BraTS 2021 training data: glioma MRI, one FLAIR volume a case, labels 1 (necrotic core), 2 (edema), "
              "4 (enhancing tumour)", cite=BRATS,
        images=["**/BraTS2021_*_flair.nii.gz"], masks=[(r"_flair\.nii\.gz$", "_seg.nii.gz")], patient=r"(BraTS2021_\d+)",
        row=dict(source="BraTS2021", modality="MRI", anatomy="Brain", pathology="Glioma", anomaly="yes",
                 lesion_labels="1,2,4")),
    "brats2021-t1ce": dict(
        about="BraTS 2021 as contrast-enhanced MRI: the T1Gd volume of each case, the same labels", cite=BRATS,
        images=["**/BraTS2021_*_t1ce.nii.gz"], masks=[(r"_t1ce\.nii\.gz$", "_seg.nii.gz")], patient=r"(BraTS2021_\d+)",
        row=dict(source="BraTS2021", modality="CE-MRI", anatomy="Brain", pathology="Glioma", anomaly="yes",
                 lesion_labels="1,2,4")),
    "lits": dict(
        about="LiTS (LiverCT): abdominal CT volume-N.nii with segmentation-N.nii, 1 liver and 2 tumour (the lesion), "
              "beside it (official batches) or in segmentations/ (Kaggle mirror); liver window",
        cite="MIC-DKFZ/nnUNet nnunet/dataset_conversion/Task029_LiverTumorSegmentationChallenge.py; Bilic et al. 2023",
        images=["**/volume-*.nii"], masks=[(r"volume-(\d+)\.nii$", r"segmentation-\1.nii"),
                                           (r"^(.*/)?[^/]*volume-(\d+)\.nii$", r"segmentations/segmentation-\2.nii")],
        patient=r"volume-(\d+)", row=dict(source="LiTS", modality="CT", anatomy="Liver", pathology="Tumor",
                                          anomaly="yes", lesion_labels="2")),
    "atlas2": dict(
        about="ATLAS v2.0 stroke lesions: BIDS T1w MRI in MNI space with a binary lesion mask beside it",
        cite="Liew et al., Sci Data 2022 (doi 10.1038/s41597-022-01401-7); openmedlab/Awesome-Medical-Dataset ATLASv2.0",
        images=["**/*_space-MNI152NLin2009aSym_T1w.nii.gz"],
        masks=[(r"_T1w\.nii\.gz$", "_label-L_desc-T1lesion_mask.nii.gz")], patient=r"(sub-r\d{3}s\d{3})",
        row=dict(source="ATLAS", modality="MRI", anatomy="Brain", pathology="Infarct", anomaly="yes")),
    "mosmed": dict(
        about="MosMedData COVID19_1110 chest CT: studies/CT-0 are normal; of CT-1 to CT-4 only the 50 studies with "
              "masks/study_NNNN_mask.nii.gz can be sliced by lesion (the others are skipped); lung window",
        cite="Morozov et al. 2020 (medRxiv 10.1101/2020.05.20.20100362); mosmed.ai/en/datasets/covid191110",
        images=["**/studies/CT-*/study_*.nii.gz"], masks=[(r"^(.*/)?studies/CT-\d/(study_\d+)\.nii\.gz$",
                                                           r"\1masks/\2_mask.nii.gz")], patient=r"(study_\d+)",
        classes=dict(path=r"CT-(\d)", map={"0": dict(anomaly="no"), **{c: dict(anomaly="yes", pathology="Pneumonia",
                                                                               needs_mask=True) for c in "1234"}}),
        row=dict(source="MosMed", modality="CT", anatomy="Lung")),
    "busi": dict(
        about="BUSI breast ultrasound: benign/, malignant/ and normal/ folders, 'benign (N).png' with its "
              "'benign (N)_mask.png' (and _mask_1.png ..., one mask together)",
        cite="Al-Dhabyani et al. 2020; constantinpape/torch-em torch_em/data/datasets/medical/busi.py",
        images=["benign/*).png", "malignant/*).png", "normal/*).png"], exclude=r"_mask", masks=[(r"\.png$", "_mask*.png")],
        classes=dict(path=r"^(benign|malignant|normal)/", map={"benign": dict(anomaly="yes", pathology="Benign tumor"),
                                                               "malignant": dict(anomaly="yes", pathology="Malignant tumor"),
                                                               "normal": dict(anomaly="no")}),
        row=dict(source="BUSI", modality="Ultrasound", anatomy="Breast")),
    "isic2018": dict(
        about="ISIC 2018 Task 1: dermoscopy ISIC2018_Task1-2_*_Input/ISIC_N.jpg, masks "
              "ISIC2018_Task1_*_GroundTruth/ISIC_N_segmentation.png (no diagnosis: no pathology question)",
        cite="challenge.isic-archive.com/landing/2018/45; constantinpape/torch-em medical/isic.py",
        images=["**/ISIC2018_Task1-2_*_Input/ISIC_*.jpg"],
        masks=[(r"ISIC2018_Task1-2_(\w+)_Input/(ISIC_\d+)\.jpg$", r"ISIC2018_Task1_\1_GroundTruth/\2_segmentation.png")],
        row=dict(source="ISIC2018", modality="Dermoscopy", anatomy="Skin", anomaly="yes", mask_threshold="128")),
    "kvasir-seg": dict(
        about="Kvasir-SEG: colonoscopy images/*.jpg with masks/ of the same name (JPEG masks, thresholded at 128)",
        cite="DebeshJha/Kvasir-SEG README.md; Jha et al. 2019",
        images=["**/images/*.jpg"], masks=[(r"(^|/)images/", r"\1masks/")],
        row=dict(source="Kvasir-SEG", modality="Endoscopy", anatomy="Alimentary", pathology="Polyp", anomaly="yes",
                 mask_threshold="128")),
    "cvc-clinicdb": dict(
        about="CVC-ClinicDB: colonoscopy Original/N.tif with 'Ground Truth'/N.tif (or the PNG/ mirror)",
        cite="polyp.grand-challenge.org/CVCClinicDB; Bernal et al. 2015; dataset-ninja/cvc-612 src/convert.py",
        images=["**/Original/*.tif", "**/Original/*.png"], masks=[(r"(^|/)Original/", r"\1Ground Truth/")],
        row=dict(source="CVC-ClinicDB", modality="Endoscopy", anatomy="Alimentary", pathology="Polyp", anomaly="yes",
                 mask_threshold="128")),
    "ph2": dict(
        about="PH2 dermoscopy: 'PH2 Dataset images'/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp, the lesion mask in "
              "IMDnnn_lesion/, the clinical diagnosis (0 common nevus, 1 atypical nevus, 2 melanoma) in PH2_dataset.txt",
        cite="Mendonça et al. 2013; dataset-ninja/ph2 src/convert.py; constantinpape/torch-em medical/ph2.py",
        images=["**/IMD*_Dermoscopic_Image/IMD*.bmp"],
        masks=[(r"(IMD\d+)_Dermoscopic_Image/IMD\d+\.bmp$", r"\1_lesion/\1_lesion.bmp")], patient=r"(IMD\d+)",
        classes=dict(table=dict(file="**/PH2_dataset.txt", sep="||", key="Name", value="Clinical Diagnosis"),
                     map={"0": dict(anomaly="yes", pathology="Nevus"), "1": dict(anomaly="yes", pathology="Atypical nevus"),
                          "2": dict(anomaly="yes", pathology="Melanoma")}),
        row=dict(source="PH2", modality="Dermoscopy", anatomy="Skin")),
    "idrid": dict(
        about="IDRiD segmentation part: fundus 'A. Segmentation/1. Original Images/<split>/IDRiD_NN.jpg', lesion masks "
              "IDRiD_NN_{MA,HE,EX,SE}.tif under '2. All Segmentation Groundtruths/<split>/' (together one mask; the "
              "optic disc is anatomy, not lesion)",
        cite="Porwal et al. 2018 (IDRiD, Data 3(3):25); loaders read by helper search (IDRiD LESION_TYPE_MAP)",
        images=["**/1. Original Images/*/IDRiD_*.jpg"],
        masks=[(r"1\. Original Images/(.+)/(IDRiD_\d+)\.jpg$", rf"2. All Segmentation Groundtruths/\1/*/\2_{kind}.tif")
               for kind in ("MA", "HE", "EX", "SE")],
        row=dict(source="IDRiD", modality="Fundus", anatomy="Retina", pathology="Diabetic retinopathy", anomaly="yes")),
    "resc": dict(
        about="RESC (AI Challenger 2018 retinal edema): OCT slices original_images/<cube>.img/N.bmp with "
              "label_images/<cube>_labelMark/N.bmp, 255 edema area, 191 subretinal fluid, 128 pigment epithelial "
              "detachment; a slice without them is normal",
        cite="ShawnBIT/AI-Challenger-Retinal-Edema-Segmentation Seg_dataset.py; Hu et al. 2019",
        images=["**/original_images/*.img/*.bmp"],
        masks=[(r"original_images/(.+)\.img/(\d+)\.bmp$", r"label_images/\1_labelMark/\2.bmp")], patient=r"(P\d+)",
        row=dict(source="RESC", modality="OCT", anatomy="Retina", anomaly="mask", lesion_labels="255,191,128",
                 label_pathology="255=Edema,191=Subretinal fluid,128=Pigment epithelial detachment")),
    **{f"mvfa-{organ}": dict(
        about=f"{title}, as the 2D anomaly-detection benchmarks lay it out (MVFA's {folder}; BMAD alike): "
              "{valid,test}/{good,Ungood}/img/*.png, masks in Ungood/anomaly_mask/ (BMAD: label/)",
        cite="MediaBrain-SJTU/MVFA-AD dataset/medical_few.py and README; DorisBao/BMAD README",
        images=["**/good/img/*.png", "**/Ungood/img/*.png"],
        masks=[(r"Ungood/img/", "Ungood/anomaly_mask/"), (r"Ungood/img/", "Ungood/label/")], patient=r"(\d+)_\d+\.png$",
        classes=dict(path=r"/(good|Ungood)/", map={"good": dict(anomaly="no"), "Ungood": dict(anomaly="yes")}),
        row=dict(source=f"{folder} (MVFA)", modality=modality, anatomy=anatomy, pathology=pathology))
       for organ, title, folder, modality, anatomy, pathology in (
           ("brain", "BraTS 2021 slices", "Brain_AD", "MRI", "Brain", "Tumor"),
           ("liver", "BTCV + LiTS liver CT slices", "Liver_AD", "CT", "Liver", "Tumor"),
           ("resc", "RESC retinal OCT", "Retina_RESC_AD", "OCT", "Retina", "Edema"))},
    "br35h": dict(
        about="Br35H brain tumour detection: MRI yes/y*.jpg and no/no*.jpg (no masks: no localization question)",
        cite="Hamada 2020 (IEEE DataPort / Kaggle 'Br35H'); loaders read by helper search",
        images=["yes/*.jpg", "no/*.jpg"],
        classes=dict(path=r"^(yes|no)/", map={"yes": dict(anomaly="yes", pathology="Tumor"), "no": dict(anomaly="no")}),
        row=dict(source="Br35H", modality="MRI", anatomy="Brain")),
    "chestxray8": dict(
        about="NIH ChestX-ray8/14: images*/images/NNNNNNNN_NNN.png (or images/), labels in Data_Entry_2017.csv "
              "('No Finding' normal; images of several findings skipped), boxes in BBox_List_2017.csv drawn as masks",
        cite="Wang et al. 2017; NIH CXR release README (nihcc.app.box.com); Kaggle nih-chest-xrays/data",
        images=["**/images/*.png"], patient=r"(\d{8})_\d{3}\.png$",
        classes=dict(table=dict(file="**/Data_Entry_2017.csv", sep=",", key="Image Index", value="Finding Labels"),
                     map={"No Finding": dict(anomaly="no")}, other=dict(anomaly="yes", pathology="{value}"),
                     skip=r"\|"),
        boxes=dict(file="**/BBox_List_2017.csv", key="Image Index", xywh=["Bbox [x", "y", "w", "h]"]),
        row=dict(source="ChestX-ray8", modality="X-ray", anatomy="Chest")),
    "lymphoma": dict(
        about="Malignant Lymphoma Classification (IICBU 2008): histology CLL/, FL/, MCL/ *.tif (no masks)",
        cite="Orlov et al. 2010; cancer-research-data-inside/lymphoma Readme.md",
        images=["CLL/*.tif", "FL/*.tif", "MCL/*.tif"],
        classes=dict(path=r"^(CLL|FL|MCL)/", map={
            "CLL": dict(anomaly="yes", pathology="Chronic lymphocytic leukemia"),
            "FL": dict(anomaly="yes", pathology="Follicular lymphoma"),
            "MCL": dict(anomaly="yes", pathology="Mantle cell lymphoma")}),
        row=dict(source="Malignant Lymphoma", modality="Microscopy", anatomy="Lymph Node")),
    "bach": dict(
        about="BACH (ICIAR 2018) breast histology: Photos/{Normal,Benign,InSitu,Invasive}/*.tif (no masks)",
        cite="Aresta et al. 2019; kaiko-ai/eva docs/datasets/bach.md",
        images=["**/Photos/Normal/*.tif", "**/Photos/Benign/*.tif", "**/Photos/InSitu/*.tif", "**/Photos/Invasive/*.tif"],
        classes=dict(path=r"Photos/(Normal|Benign|InSitu|Invasive)/", map={
            "Normal": dict(anomaly="no"), "Benign": dict(anomaly="yes", pathology="Benign tumor"),
            "InSitu": dict(anomaly="yes", pathology="Carcinoma in situ"),
            "Invasive": dict(anomaly="yes", pathology="Invasive carcinoma")}),
        row=dict(source="BACH", modality="Microscopy", anatomy="Breast")),
}
NOT_COVERED = {
    "DDTI": "its raw release marks nodules as polygons in XML (<svg> JSON), which a table of paths cannot turn into "
            "masks; export them as PNG masks and list them in a manifest",
    "PediDemi": "no documented layout could be found (files, sequences, label values): list its volumes in a manifest",
}


def describe() -> str:
    """`--recipe list`: every recipe, what it expects and where that comes from."""
    lines = [f"{name}: {r['about']}\n    expects {', '.join(r['images'])} under --root\n    layout from {r['cite']}"
             for name, r in RECIPES.items()]
    lines += [f"(not a recipe) {name}: {why}" for name, why in NOT_COVERED.items()]
    return "\n".join(lines)


def _table(root: str, spec: dict) -> dict:
    """{key: value} of a label file under root (CSV, or cells separated by spec['sep'], e.g. PH2's '||')."""
    found = sorted(glob.glob(os.path.join(root, spec["file"]), recursive=True))
    if not found:
        raise ValueError(f"{root}: no {spec['file']} (the recipe's label file)")
    with open(found[0], encoding="utf-8-sig", newline="") as f:
        if spec.get("sep", ",") == ",":
            rows = list(csv.reader(f))
        else:
            rows = [[cell.strip() for cell in line.rstrip("\n").split(spec["sep"])] for line in f if line.strip()]
    header = [h.strip() for h in rows[0]]
    key, cols = header.index(spec["key"]), spec.get("xywh") or [spec["value"]]
    missing = [c for c in cols if c not in header]
    if missing:
        raise ValueError(f"{found[0]}: no column {missing[0]!r} (columns: {', '.join(header)})")
    table = {}
    for cells in rows[1:]:
        if len(cells) > key:
            values = [cells[header.index(c)].strip() for c in cols]
            table.setdefault(cells[key].strip(), []).append(values)
    return table


def rows(name: str, root: str, staging: str) -> tuple[list[dict], dict]:
    """Manifest rows of one source under `root` (paths absolute; box masks drawn into `staging`), and what was
    skipped. ValueError when the root holds none of the recipe's files or a label file it needs."""
    recipe = RECIPES[name]
    root = os.path.abspath(root)
    images = sorted({f for pattern in recipe["images"] for f in glob.glob(os.path.join(root, pattern), recursive=True)
                     if not re.search(recipe.get("exclude", r"$^"), os.path.basename(f))})
    if not images:
        raise ValueError(f"{root}: --recipe {name} found none of {', '.join(recipe['images'])}: give as --root the folder "
                         "the download unpacked into (python build.py --recipe list says what each recipe expects)")
    classes = recipe.get("classes", {})
    table = _table(root, classes["table"]) if "table" in classes else None
    boxes = _table(root, recipe["boxes"]) if "boxes" in recipe else {}
    out, skipped = [], {}
    for path in images:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        match = re.search(recipe.get("patient", r"$^"), rel)
        ident = match.group(1) if match else os.path.splitext(os.path.basename(rel))[0]
        row = {**recipe["row"], "image": path, "patient": f"{name}-{ident}"}
        fields = {}
        if classes:
            found = re.search(classes["path"], rel) if "path" in classes else None
            value = found.group(1) if found else (table.get(os.path.basename(rel)) or table.get(ident) or [[None]])[0][0] \
                if table is not None else None
            if value is None or ("skip" in classes and re.search(classes["skip"], value)):
                skipped["no class, or several"] = skipped.get("no class, or several", 0) + 1
                continue
            fields = classes["map"].get(value, classes.get("other", {}))
            row.update({k: str(v).format(value=value) for k, v in fields.items() if k != "needs_mask"})
        masks = sorted({m for pattern, repl in recipe.get("masks", []) if re.search(pattern, rel)
                        for m in glob.glob(os.path.join(root, glob.escape(re.sub(pattern, repl, rel)).replace("[*]", "*")))})
        if boxes.get(os.path.basename(rel)):
            masks = [_box_mask(path, boxes[os.path.basename(rel)], staging)]
        if fields.get("needs_mask") and not masks:
            skipped["abnormal without a mask"] = skipped.get("abnormal without a mask", 0) + 1
            continue
        if row.get("anomaly") == "mask":  # each image's answer from its own mask (RESC: most slices are normal)
            labels, threshold = lesion_rule(row)
            row["anomaly"] = "yes" if any(read_mask(m, labels, threshold).any() for m in masks) else "no"
        if row.get("anomaly") == "yes" and masks:
            row["mask"] = "|".join(masks)
        if row.get("anomaly") == "no":
            row.pop("pathology", None)
        out.append(row)
    return out, skipped


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
