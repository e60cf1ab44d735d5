"""What several test files share: the repository root, torchrun in a subprocess, Con-GRPO's small test settings, the
inputs a mutation pass builds once."""
import json
import os
import shutil
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args, nproc=2):
    """Run a script of the repository under torchrun with `nproc` gloo processes; fail with the end of its output."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_port", str(free_port()), os.path.join(ROOT, script), *map(str, args)],
                          env=ENV, cwd=ROOT, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def grpo_args(ckpt, data_path, out, *extra):
    """train_grpo.py on the `five` set from the `sft5` checkpoint: 2 prompts x G=4 a step, 3 steps an epoch."""
    return ["--ckpt", ckpt, "--data", data_path, "--out", str(out), "--group-size", "4", "--prompts-per-step", "2",
            "--max-new-tokens", "96", "--micro-batch", "4", "--lr", "1e-3", *extra]


def count_tower_images(net, seen: list):
    """A hook on the model's vision tower that appends the number of images each call reads (Qwen's towers take a grid
    row an image, SigLIP's a pixel row): remove() it when done."""
    import model
    def hook(module, args, kwargs):
        seen.append(len(kwargs["grid_thw"]) if "grid_thw" in kwargs else len(kwargs.get("pixel_values", *args[:1])))
    return model.vision_modules(net)[0].register_forward_pre_hook(hook, with_kwargs=True)


def assert_grads_close(grads: dict, expected: dict, rel: float = 1e-5):
    """The same gradients summed in another order: each equal to rounding relative to itself, or, for one that is 0 but
    for rounding (SigLIP's key bias under a softmax), relative to the whole gradient."""
    import torch
    assert grads.keys() == expected.keys()
    whole = torch.stack([g.norm() for g in expected.values()]).norm()
    for name, grad in expected.items():
        assert (grads[name] - grad).norm() <= rel * grad.norm() + 1e-3 * rel * whole, name


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def volume(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """A SimpleITK image of a [z, y, x] array with LPS-identity axes: x toward the patient's left, y posterior."""
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def write_dicom_series(image, folder, uid="1.2.826.0.1.3680043.2.1125.1", prefix="slice", skip=()):
    """One DICOM file a slice of `image` in `folder`, with the tags a series reader orders them by."""
    import SimpleITK as sitk
    os.makedirs(folder, exist_ok=True)
    writer, d = sitk.ImageFileWriter(), image.GetDirection()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        if k in skip:
            continue
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in [("0008|0060", "CT"), ("0020|000e", uid), ("0020|000d", uid + ".9"), ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(map(str, position))),
                           ("0020|0037", "\\".join(map(str, d[0:7:3] + d[1:8:3]))),
                           ("0008|0018", f"{uid}.{k + 1}")]:
            plane.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, f"{prefix}{k:03d}.dcm"))
        writer.Execute(plane)


CACHE = os.environ.get("MEDAD_TEST_CACHE")  # the mutation pass (CONTRIBUTING.md) builds the inputs below once


def built_once(name: str, tmp_path_factory, build) -> str:
    """A test input's folder (data, the tiny model, an SFT checkpoint to start from), made by build(folder). Under
    MEDAD_TEST_CACHE it is made once and reused by every later run: the mutation pass runs the suite once a mutant,
    and there the inputs are the clean code's while each test's own work is the mutant's."""
    if not CACHE:
        out = str(tmp_path_factory.mktemp(name))
        build(out)
        return out
    out = os.path.join(CACHE, name)
    if not os.path.isfile(os.path.join(out, ".done")):
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        build(out)
        open(os.path.join(out, ".done"), "w").close()
    return out
