"""Shared fixtures: isolated autoseg folders and tiny datasets written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.datasets.layout import DatasetInfo, save_dataset_info
from autoseg.io.images import Geometry, write_image

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def autoseg_env(tmp_path, monkeypatch):
    """Point AUTOSEG_RAW / _PREPROCESSED / _RESULTS at fresh folders."""
    roots = {}
    for var, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        p = tmp_path / sub
        p.mkdir()
        monkeypatch.setenv(var, str(p))
        roots[sub] = p
    return roots


def blob_case(shape_zyx, spacing_zyx, seed, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    """A tiny CT-like case: a bright ellipsoid (label 1) with a darker sphere inside (label 2)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    c = rng.uniform(-0.15, 0.15, 3)
    r = (z - c[0]) ** 2 / 0.5 + (y - c[1]) ** 2 / 0.4 + (x - c[2]) ** 2 / 0.3
    seg = (r < 1).astype(np.uint8)
    seg[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < 0.05] = 2
    img = np.full(shape_zyx, -1000.0, np.float32)
    body = (y ** 2 + x ** 2) < 0.95
    img[body] = 0
    img[seg == 1] = 60
    img[seg == 2] = 20
    img += rng.normal(0, 10, shape_zyx).astype(np.float32)
    geom = Geometry(list(shape_zyx), list(map(float, spacing_zyx)), list(origin), [float(d) for d in direction])
    return img.astype(np.int16), seg, geom


def write_blob_dataset(folder: Path, n: int = 4, shape=(12, 24, 24), spacing=(2.5, 1.0, 1.0), seed: int = 0) -> DatasetInfo:
    """Write a tiny raw dataset (nnU-Net v2 layout) into ``folder``."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        img, seg, geom = blob_case(shape, spacing, seed + i)
        write_image(img, geom, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_image(seg, geom, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    info = DatasetInfo(name=folder.name, channel_names={"0": "CT"}, labels={"background": 0, "liver": 1, "tumor": 2}, numTraining=n)
    save_dataset_info(info, folder)
    return info


@pytest.fixture(autouse=True)
def _auto_runtime_is_torch(monkeypatch):
    """In-process predictions run PyTorch whichever optional runtimes this machine has (CI has none),
    so results do not depend on the machine; tests of ``--runtime auto``'s choice set it themselves."""
    from autoseg.inference import runtimes
    monkeypatch.setattr(runtimes, "AUTO_CPU_RUNTIMES", ("torch",))


@pytest.fixture(autouse=True)
def _restore_locale():
    """GDCM's DICOM writer (used by tests that make DICOM series) switches the process to the C
    locale, after which ``open()`` defaults to ASCII; every test starts and ends in the same locale."""
    import locale
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)
