"""The public sources of MedAD-38K as they are downloaded: one table entry a source, what it ships and where its layout
comes from (recipes.py turns an entry and a download into manifest rows).

Imports nothing from the project. A recipe is data: the image files (globs under --root, in order of preference; `same`
names an image found twice, as mirrors ship one frame in two formats), how a mask's path follows from its image's
(regex substitutions; several matches are one mask), the patient (a regex on the path, a label file, or a source's
published grouping), the source's modality, anatomy and pathology, which images are normal (a class from the path or a
label file), which mask values are lesion, boxes or polygons drawn as masks where a source has them.
"""

BRATS = "MIC-DKFZ/nnUNet nnunetv2/dataset_conversion/Dataset137_BraTS21.py; Baid et al. 2021 (arXiv 2107.02314)"
UNLABELLED = "no mask: its labels are not released (a test or validation split)"
# CVC-ClinicDB's 612 frames come from 29 colonoscopy videos of near-identical frames: frame ranges per video, from
# dataset-ninja/cvc-612 src/convert.py (frame_ranges; 29 contiguous ranges over frames 1-612)
CVC_SEQUENCES = [(1, 25), (26, 50), (51, 67), (68, 78), (79, 103), (104, 126), (127, 151), (152, 177), (178, 199),
                 (200, 205), (206, 227), (228, 252), (253, 277), (278, 297), (298, 317), (318, 342), (343, 363),
                 (364, 383), (384, 408), (409, 428), (429, 447), (448, 466), (467, 478), (479, 503), (504, 528),
                 (529, 546), (547, 571), (572, 591), (592, 612)]
RECIPES = {
    **{name: dict(
        about=about, cite=BRATS + cite, images=[f"**/BraTS2021_*_{sequence}.nii.gz"],
        masks=[(rf"_{sequence}\.nii\.gz$", "_seg.nii.gz")], patient=r"(BraTS2021_\d+)", unlabelled_without_mask=True,
        row=dict(source="BraTS2021", modality=modality, anatomy="Brain", pathology="Glioma", anomaly="yes",
                 lesion_labels="1,2,4"))
       for name, sequence, modality, about, cite in (
           ("brats2021", "flair", "MRI", "BraTS 2021: glioma MRI, one FLAIR volume a case, labels 1 (necrotic core), 2 "
            "(edema), 4 (enhancing tumour); ValidationData cases have no _seg and are skipped",
            "; openmedlab/Awesome-Medical-Dataset resources/BraTS2021.md; neuro-ml/amid amid/brats2021.py"),
           ("brats2021-t1ce", "t1ce", "CE-MRI", "BraTS 2021 as contrast-enhanced MRI: the T1Gd volume of each case, the "
            "same labels and skips", "; neuro-ml/amid amid/brats2021.py"))},
    "lits": dict(
        about="LiTS (LiverCT): abdominal CT volume-N.nii with segmentation-N.nii, 1 liver and 2 tumour (the lesion), "
              "beside it ('Training Batch 1'/'2') or in segmentations/ beside volume_ptK/ (Kaggle mirror); liver window. "
              "13 volumes hold no tumour (32, 34, 38, 41, 47, 87, 89, 91, 105, 106, 114, 115, 119): their slices are "
              "normal examples",
        cite="MIC-DKFZ/nnUNet nnunet/dataset_conversion/Task029_LiverTumorSegmentationChallenge.py; Bilic et al. 2023; "
             "kaiko-ai/eva docs/datasets/lits.md; tumour-free list: xmengli/H-DenseUNet train_2ddense.py (liverlist), "
             "openmedlab/Awesome-Medical-Dataset resources/LiTS.md (tumour in 118 of 131 cases)",
        images=["**/volume-*.nii"], masks=[(r"volume-(\d+)\.nii$", r"segmentation-\1.nii"),
                                           (r"^(.*/)?[^/]*volume-(\d+)\.nii$", r"segmentations/segmentation-\2.nii")],
        patient=r"volume-(\d+)", row=dict(source="LiTS", modality="CT", anatomy="Liver", pathology="Tumor",
                                          anomaly="yes", lesion_labels="2"), unlabelled_without_mask=True),
    "atlas2": dict(
        about="ATLAS v2.0 stroke lesions: BIDS T1w MRI in MNI space with a binary lesion mask beside it; Testing/ holds "
              "T1w scans whose masks are withheld: skipped",
        cite="Liew et al., Sci Data 2022 (doi 10.1038/s41597-022-01401-7; test masks hidden); openmedlab/"
             "Awesome-Medical-Dataset resources/ATLASv2.0.md; neuro-ml/amid amid/atlas.py (no mask under Testing)",
        unlabelled_without_mask=True,
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
              "ISIC2018_Task1_*_GroundTruth/ISIC_N_segmentation.png (no diagnosis: no pathology question); an image "
              "without its mask (a split whose ground truth is not given) is skipped",
        unlabelled_without_mask=True,
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
        about="CVC-ClinicDB: colonoscopy Original/N.tif with 'Ground Truth'/N.tif; the Kaggle mirror ships every frame "
              "twice (TIF/ and PNG/, the TIF built), with metadata.csv. The patient is the video (29 of them): "
              "metadata.csv's sequence_id, or the published frame ranges",
        cite="polyp.grand-challenge.org/CVCClinicDB; Bernal et al. 2015; dataset-ninja/cvc-612 src/convert.py (Kaggle "
             "balraj98/cvcclinicdb: PNG/Original, PNG/Ground Truth; frame_ranges of the 29 videos)",
        images=["**/Original/*.tif", "**/Original/*.png"], masks=[(r"(^|/)Original/", r"\1Ground Truth/")],
        same=r"(?:^|/)(\d+)\.(?:tif|png)$",
        patient=dict(frame=r"(?:^|/)(\d+)\.(?:tif|png)$", ranges=CVC_SEQUENCES,
                     table=dict(file="**/metadata.csv", keys=["png_image_path", "tif_image_path"], value="sequence_id")),
        row=dict(source="CVC-ClinicDB", modality="Endoscopy", anatomy="Alimentary", pathology="Polyp", anomaly="yes",
                 mask_threshold="128")),
    "ph2": dict(
        about="PH2 dermoscopy: 'PH2 Dataset images'/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp, the lesion mask in "
              "IMDnnn_lesion/, the clinical diagnosis (0 common nevus, 1 atypical nevus, 2 melanoma) in PH2_dataset.txt",
        cite="Mendonça et al. 2013; dataset-ninja/ph2 src/convert.py; constantinpape/torch-em medical/ph2.py",
        images=["**/IMD*_Dermoscopic_Image/IMD*.bmp"],
        masks=[(r"(IMD\d+)_Dermoscopic_Image/IMD\d+\.bmp$", r"\1_lesion/\1_lesion.bmp")], patient=r"(IMD\d+)",
        classes=dict(tables=[dict(file="**/PH2_dataset.txt", sep="||", key="Name", value="Clinical Diagnosis")],
                     map={"0": dict(anomaly="yes", pathology="Nevus"), "1": dict(anomaly="yes", pathology="Atypical nevus"),
                          "2": dict(anomaly="yes", pathology="Melanoma")}),
        row=dict(source="PH2", modality="Dermoscopy", anatomy="Skin")),
    "idrid": dict(
        about="IDRiD segmentation part: fundus 'A. Segmentation/1. Original Images/<split>/IDRiD_NN.jpg', lesion masks "
              "IDRiD_NN_{MA,HE,EX,SE}.tif under '2. All Segmentation Groundtruths/<split>/' (together one mask; the "
              "optic disc is anatomy, not lesion). Of the full download it reads A only: B's and C's images carry no "
              "mask (idrid-grading reads B; C's optic disc and fovea centres are no lesion label)",
        cite="Porwal et al. 2018 (IDRiD, Data 3(3):25); idrid.grand-challenge.org/Data (MA 81, EX 81, HE 80, SE 40 "
             "masks)",
        images=["**/1. Original Images/*/IDRiD_*.jpg"], exclude=r"(^|/)(B\. Disease Grading|C\. Localization)/",
        unlabelled_without_mask=True,
        masks=[(r"1\. Original Images/(.+)/(IDRiD_\d+)\.jpg$", rf"2. All Segmentation Groundtruths/\1/*/\2_{kind}.tif")
               for kind in ("MA", "HE", "EX", "SE")],
        row=dict(source="IDRiD", modality="Fundus", anatomy="Retina", pathology="Diabetic retinopathy", anomaly="yes")),
    "idrid-grading": dict(
        about="IDRiD disease grading part: 'B. Disease Grading/1. Original Images/<split>/IDRiD_NNN.jpg', graded in "
              "'2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv' (b. ... Testing ...): Retinopathy grade 0 "
              "is normal, 1-4 diabetic retinopathy (no masks: no localization question). Training and testing reuse "
              "the same names, each split read with its own file",
        cite="Porwal et al. 2018; headers 'Image name,Retinopathy grade,Risk of macular edema ' (a trailing space, "
             "trailing empty columns) as IDRiD loaders read them",
        images=["**/1. Original Images/*/IDRiD_*.jpg"], exclude=r"(^|/)(A\. Segmentation|C\. Localization)/",
        patient=r"(?:^|/)(\w)\. (?:Training|Testing) Set/(IDRiD_\d+)\.jpg$",
        classes=dict(tables=[
            dict(where=r"(^|/)a\. Training Set/", file="**/a. IDRiD_Disease Grading_Training Labels.csv",
                 key="Image name", value="Retinopathy grade"),
            dict(where=r"(^|/)b\. Testing Set/", file="**/b. IDRiD_Disease Grading_Testing Labels.csv",
                 key="Image name", value="Retinopathy grade")],
            map={"0": dict(anomaly="no")}, other=dict(anomaly="yes", pathology="Diabetic retinopathy")),
        row=dict(source="IDRiD", modality="Fundus", anatomy="Retina")),
    "resc": dict(
        about="RESC (AI Challenger 2018 retinal edema): OCT slices original_images/<cube>.img/N.bmp with "
              "label_images/<cube>_labelMark/N.bmp, 255 edema area, 191 subretinal fluid, 128 pigment epithelial "
              "detachment; a slice without them is normal. The patient is the cube's prefix (P0012_..., PC008_...); "
              "Edema_testset ships no label_images: skipped",
        cite="ShawnBIT/AI-Challenger-Retinal-Edema-Segmentation Seg_dataset.py, data/data_path/*.txt (cube names "
             "P0012_MacularCube512x128_..., PC002_...); Hu et al. 2019",
        images=["**/original_images/*.img/*.bmp"], unlabelled_without_mask=True,
        masks=[(r"original_images/(.+)\.img/(\d+)\.bmp$", r"label_images/\1_labelMark/\2.bmp")],
        patient=r"original_images/([^/_]+)_[^/]*\.img/",
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
        about="NIH ChestX-ray8/14: images*/images/NNNNNNNN_NNN.png (or images/), labels in Data_Entry_2017_v2020.csv "
              "(NIH's current file) or Data_Entry_2017.csv (the Kaggle mirror) ('No Finding' normal; images of several "
              "findings skipped), boxes in BBox_List_2017.csv drawn as masks; the patient is the name's first 8 digits",
        cite="Wang et al. 2017; NIH CXR release README (nihcc.app.box.com); Kaggle nih-chest-xrays/data; "
             "huggingface.co/datasets/alkzar90/NIH-Chest-X-ray-dataset data/ (Data_Entry_2017_v2020.csv)",
        images=["**/images/*.png"], patient=r"(\d{8})_\d{3}\.png$",
        classes=dict(tables=[dict(file=["**/Data_Entry_2017_v2020.csv", "**/Data_Entry_2017.csv"], key="Image Index",
                                  value="Finding Labels")],
                     map={"No Finding": dict(anomaly="no")}, other=dict(anomaly="yes", pathology="{value}"),
                     skip=r"\|"),
        boxes=dict(file="**/BBox_List_2017.csv", key="Image Index", xywh=["Bbox [x", "y", "w", "h]"]),
        row=dict(source="ChestX-ray8", modality="X-ray", anatomy="Chest")),
    "lymphoma": dict(
        about="Malignant Lymphoma Classification (IICBU 2008): histology CLL/, FL/, MCL/ *.tif (no masks); the patient "
              "is the specimen a name carries (sj-03-2810_001.tif; sj-05-1881-R1_018.tif, its -R1 part of the same "
              "specimen's id kept together)",
        cite="Orlov et al. 2010; cancer-research-data-inside/lymphoma Readme.md, database_w_group.ipynb (file names)",
        images=["CLL/*.tif", "FL/*.tif", "MCL/*.tif"], patient=r"(sj-\d{2}-\d+)(?:-R\d+)?_\d+\.tif$",
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
    "ddti": dict(
        about="DDTI thyroid ultrasound: case N's images N_M.jpg beside N.xml, whose <mark> elements hold the image "
              "number M and the nodules as polygons (a JSON list of {points: [{x, y}, ...]}) in <svg>, drawn as the "
              "mask; an image without a polygon, or whose <svg> is cut short (197.xml, 205.xml), is skipped",
        cite="Pedraza et al. 2015; xuao575/DDTI_preprocessing preprocess.py and thyroid.py (<mark>, <image>, <svg>, "
             "points, x, y; N_M.jpg)",
        images=["**/*_*.jpg"], select=r"(^|/)\d+_\d+\.jpg$", patient=r"(?:^|/)(\d+)_\d+\.jpg$",
        polygons=dict(file=(r"(\d+)_\d+\.jpg$", r"\1.xml"), image=r"_(\d+)\.jpg$"),
        row=dict(source="DDTI", modality="Ultrasound", anatomy="Thyroid", pathology="Nodule", anomaly="yes")),
}
NOT_COVERED = {
    "PediDemi": "no documented layout could be found: figshare (doi 10.6084/m9.figshare.28694435) names no files, and "
                "the authors' marypopa/pediDemi processing.py expects <patient>/<timepoint>/raw/*.nii.gz without "
                "naming the sequences or the lesion label file: list its volumes in a manifest",
}
