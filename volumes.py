"""CT and MR volumes for the builder: read, shown the radiological way, windowed, and cut into the axial slices to ask.

Imports nothing from the project. Needs SimpleITK (`pip install -r requirements-volumes.txt`): one reader for NIfTI,
NRRD, MHA/MHD and DICOM series, each with its spacing and direction cosines in one world frame (LPS).

Display (design.md, "Volumes"): every axial slice anterior at the top and the patient's right on the viewer's left,
whatever axes order and directions the file stores. Reoriented so that its axes point to patient Left, Posterior and
Superior, a volume's array [z, y, x] holds at [k] exactly that picture: row 0 anterior, column 0 the patient's right.
Non-square in-plane pixels are resampled to square ones (linear for images, nearest for label maps).
"""
import os

import numpy as np

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")  # and a folder holding one DICOM series
# CT windows (centre, width) in Hounsfield units by anatomy, as radiology viewers preset them; --window overrides
CT_WINDOWS = {"brain": (40, 80), "liver": (30, 150), "abdomen": (50, 400), "alimentary": (50, 400),
              "lung": (-600, 1500), "chest": (-600, 1500)}
CT_DEFAULT = (50, 400)  # soft tissue
INSTALL = "pip install -r requirements-volumes.txt (SimpleITK)"


def is_volume(path: str) -> bool:
    return os.path.isdir(path) or path.lower().endswith(SUFFIXES)


def simpleitk():
    try:
        import SimpleITK
    except ImportError:
        raise SystemExit(f"reading volumes needs SimpleITK, an optional extra: {INSTALL}") from None
    return SimpleITK


def read(path: str):
    """A 3D image (SimpleITK) from a volume file or a folder holding exactly one complete DICOM series; ValueError
    saying what is wrong otherwise (several series, missing slices, 4D, unreadable or truncated, NaNs)."""
    sitk = simpleitk()
    if os.path.isdir(path):
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
        if len(series) != 1:
            raise ValueError(f"{path} holds {len(series)} DICOM series; give a folder of exactly one" if series else
                             f"{path} holds no DICOM series")
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, series[0])
        _check_spacing(files, sitk)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = _read(reader.Execute, path)
    else:
        if path.lower().endswith((".nii", ".nii.gz")):
            _check_nifti(path)
        image = _read(lambda: sitk.ReadImage(path), path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path} is a {image.GetDimension()}D volume of {image.GetNumberOfComponentsPerPixel()} "
                         "channel(s); give one 3D volume of one channel (one time point, one sequence)")
    return image


def _read(execute, path):
    try:
        return execute()
    except RuntimeError as e:  # ITK's message names the cause: truncated gzip, bad header, ...
        raise ValueError(f"cannot read {path}: {str(e).strip().splitlines()[-1][:200]}") from None


def _check_nifti(path: str):
    """What ITK's NIfTI reader lets through silently: a .nii.gz cut short (it reads what is there) and NaN voxels of a
    float volume (it reads them as 0)."""
    import gzip
    import struct
    try:
        raw = gzip.open(path).read() if path.lower().endswith(".gz") else open(path, "rb").read()
    except (EOFError, OSError) as e:
        raise ValueError(f"cannot read {path}: {e} (a truncated download?)") from None
    if len(raw) < 540:
        return  # too short for a header: ITK says what is wrong
    order = "<" if struct.unpack("<i", raw[:4])[0] in (348, 540) else ">"
    two = struct.unpack(order + "i", raw[:4])[0] == 540
    datatype = struct.unpack(order + "h", raw[12:14] if two else raw[70:72])[0]
    offset = int(struct.unpack(order + "q", raw[168:176])[0] if two else struct.unpack(order + "f", raw[108:112])[0])
    kind = {16: "f4", 64: "f8"}.get(datatype)
    if kind and np.isnan(np.frombuffer(raw[offset:], dtype=order + kind, count=(len(raw) - offset) // int(kind[1]))).any():
        raise ValueError(f"{path} holds NaN voxels")


def _check_spacing(files, sitk):
    """A DICOM series must be whole: its slice positions evenly spaced along the slice normal."""
    reader = sitk.ImageFileReader()
    positions = []
    for file in files:
        reader.SetFileName(file)
        reader.ReadImageInformation()
        positions.append(np.array(reader.GetOrigin()))
    if len(positions) < 2:
        return
    normal = positions[-1] - positions[0]
    steps = np.diff(np.array(positions) @ (normal / np.linalg.norm(normal)))
    if steps.max() > 1.5 * np.median(steps):
        raise ValueError(f"the DICOM series of {os.path.dirname(files[0])} misses slices: a gap of {steps.max():.2f} mm "
                         f"where slices are {np.median(steps):.2f} mm apart")


def same_grid(image, mask) -> str | None:
    """None when a label volume lies on the image's grid (size, spacing, origin, direction), else what differs."""
    for name in ("Size", "Spacing", "Origin", "Direction"):
        a, b = np.array(getattr(image, f"Get{name}")()), np.array(getattr(mask, f"Get{name}")())
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-4):
            return f"on another grid than the image: {name.lower()} {tuple(np.round(b, 4))} against {tuple(np.round(a, 4))}"
    return None


def display(image, labels: bool = False) -> np.ndarray:
    """The volume as an array [z, rows, cols] of axial slices in the radiological display, in-plane pixels square
    (what the resampling reaches beyond the original grid is the volume's minimum, air on CT, not 0: water)."""
    sitk = simpleitk()
    image = sitk.DICOMOrient(image, "LPS")
    sx, sy, sz = image.GetSpacing()
    if not np.isclose(sx, sy, rtol=1e-3):
        s = min(sx, sy)
        size = [round(image.GetSize()[0] * sx / s), round(image.GetSize()[1] * sy / s), image.GetSize()[2]]
        outside = 0.0 if labels else float(sitk.GetArrayViewFromImage(image).min())
        image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                              image.GetOrigin(), (s, s, sz), image.GetDirection(), outside, image.GetPixelID())
    return sitk.GetArrayFromImage(image)


def window(volume: np.ndarray, modality: str, anatomy: str, override: tuple | None = None) -> tuple[float, float]:
    """(low, high) intensities mapped to black and white: CT in HU by an anatomy's window (or `override` as centre,
    width); any other volume its own 0.5-99.5 percentiles, one window for all its slices."""
    if override or modality.strip().casefold() == "ct":
        centre, width = override or CT_WINDOWS.get(anatomy.strip().casefold(), CT_DEFAULT)
        return centre - width / 2, centre + width / 2
    lo, hi = np.percentile(volume, [0.5, 99.5])
    return float(lo), float(hi)


def to_uint8(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((plane.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1) * 255).round().astype(np.uint8)


def choose_slices(lesion_area: np.ndarray, foreground: np.ndarray, more: int, normal: int) -> tuple[list, list]:
    """(lesion slices, normal slices) of one volume: the slice of largest lesion area always, plus up to `more` lesion
    slices spread evenly inside the lesion's extent (not its two end slices, its smallest cross-sections); up to
    `normal` lesion-free slices spread over those with content (a tenth of their pixels above the window's tenth), as
    normal examples, away from the ends too."""
    lesion = np.flatnonzero(lesion_area > 0)
    chosen = []
    if len(lesion):
        chosen = [int(np.argmax(lesion_area))]
        inside = [z for z in lesion[1:-1] if z != chosen[0]]
        if inside and more:
            picks = np.linspace(0, len(inside) - 1, min(more, len(inside))).round().astype(int)
            chosen += [int(inside[i]) for i in dict.fromkeys(picks)]
    free = [z for z in np.flatnonzero((lesion_area == 0) & (foreground >= 0.1))]
    normals = []
    if free and normal:
        picks = np.linspace(0, len(free) - 1, min(normal, len(free)) + 2)[1:-1].round().astype(int)  # away from the ends
        normals = [int(free[i]) for i in dict.fromkeys(picks)]
    return sorted(chosen), normals


def slices(image_path: str, mask_path: str | None, *, modality: str, anatomy: str, lesion_labels=None,
           window_override=None, more: int = 2, normal: int = 1) -> tuple[list[dict], list[int]]:
    """The axial slices to ask of one volume (choose_slices), each {"z", "pixels": uint8 [rows, cols], "lesion": bool
    mask or None, "label": the most frequent lesion label on it or None}, and the label values its mask holds. A mask
    is a label volume on the image's grid; `lesion_labels` says which of its values are lesion (None: any nonzero): a
    mask that holds none of them is a lesion-free volume (LiTS's without tumour), whose slices are normal examples.
    ValueError saying what is wrong."""
    image = read(image_path)
    volume = display(image).astype(np.float32)
    if np.isnan(volume).any():
        raise ValueError(f"{image_path} holds NaN voxels")
    labels = None
    if mask_path:
        mask = read(mask_path)
        problem = same_grid(image, mask)
        if problem:
            raise ValueError(f"the mask {mask_path} lies {problem}")
        labels = display(mask, labels=True).astype(np.int64)
    lesion = (np.isin(labels, list(lesion_labels)) if lesion_labels else labels != 0) if labels is not None else \
        np.zeros(volume.shape, dtype=bool)
    lo, hi = window(volume, modality, anatomy, window_override)
    foreground = ((volume - lo) / max(hi - lo, 1e-9) > 0.1).mean((1, 2))
    chosen, normals = choose_slices(lesion.sum((1, 2)), foreground, more, normal)
    out = []
    for z in chosen + normals:
        on = labels[z][lesion[z]] if z in chosen else None
        out.append({"z": z, "pixels": to_uint8(volume[z], lo, hi), "lesion": lesion[z] if z in chosen else None,
                    "label": int(np.bincount(on).argmax()) if on is not None and on.size else None})
    return out, sorted(set(np.unique(labels).tolist()) - {0}) if labels is not None else []
