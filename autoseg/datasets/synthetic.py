"""Synthetic abdominal CT with liver (1) and liver-tumour (2) labels, for tests and demos.

Anatomy is written once, in millimetres, for a standard ~33 x 23 cm abdomen in patient LPS
coordinates relative to the volume centre (+x patient left, +y posterior, +z superior). A case
paints it onto its own voxel grid, so the same anatomy looks the same at any spacing; when the
field of view is smaller than the body, everything is scaled by ``anatomy_scale`` (< 1).

The liver is not separable by intensity: the spleen sits at liver-like HU on the other side,
kidneys (30-150 HU), the muscle wall (~45 HU), vessels and bowel overlap its range, and a
gallbladder and IVC next to it look like hypodense lesions.

Example::

    hu, labels, geom = make_case((32, 48, 48), (3.0, 2.0, 2.0), np.random.default_rng(0))
    info = generate_dataset(Path("raw/Dataset001_Liver"), n_train=6, size="tiny")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from autoseg.datasets.layout import DatasetInfo, save_dataset_info
from autoseg.errors import AutosegError
from autoseg.io.images import Geometry, write_image
from autoseg.io.json_io import load_json, save_json

INF = np.inf
PARAMS_FILE = "synthetic.json"  # generation options, beside dataset.json
BODY_HALF_WIDTH_MM = 165.0  # standard body semi-axis, left-right (varies -10 %..+8 % per case)
BODY_HALF_DEPTH_MM = 115.0  # standard body semi-axis, anterior-posterior
LABELS = {"background": 0, "liver": 1, "tumor": 2}
FLIPPED_DIRECTION = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
LESION_COUNT_P = (0.1, 0.15, 0.25, 0.2, 0.15, 0.15)  # probability of 0, 1, .. 5 lesions per liver
LESION_RADIUS_MM = (6.0, 25.0)  # physical radius range, log-uniform (x 0.85-1.15 per axis: >= 5 mm)
MAX_LESION_RADIUS_STD = 40.0  # standard mm
NOISE_HU = (10.0, 20.0)  # quantum noise per voxel of NOISE_REF_VOXEL_MM3 (thin-slice abdominal CT)
NOISE_REF_VOXEL_MM3 = 1.0  # e.g. 0.8 x 0.8 x 1.5 mm
NOISE_FACTOR_RANGE = (0.3, 1.5)  # noise ~ 1/sqrt(voxel volume), within these factors
HYPERDENSE_P = 0.1  # the rest are hypodense: 20-40 HU against a liver of 52-70 HU


@dataclass(frozen=True)
class SizePreset:
    """Nominal grid of a size and the per-case spacing ranges (mm) it samples from."""

    shape_zyx: tuple[int, int, int]
    spacing_xy_mm: tuple[float, float]
    spacing_z_mm: tuple[float, float]


SIZE_PRESETS = {
    "tiny": SizePreset((32, 48, 48), (1.5, 2.5), (2.0, 4.0)),
    "small": SizePreset((48, 96, 96), (1.5, 3.0), (2.5, 5.0)),
    "demo": SizePreset((52, 160, 160), (2.5, 2.8), (4.0, 5.0)),
    "medium": SizePreset((96, 192, 192), (2.0, 2.4), (2.5, 5.0)),
    "large": SizePreset((300, 512, 512), (0.7, 0.95), (1.0, 2.5)),
}


def fit_anatomy_scale(fov_y_mm: float, fov_x_mm: float) -> float:
    """Scale (<= 1) at which the widest standard body fits a (y, x) field of view with 5 % margin."""
    need_x, need_y = 2 * BODY_HALF_WIDTH_MM * 1.08, 2 * BODY_HALF_DEPTH_MM * 1.08
    return float(min(1.0, 0.95 * fov_x_mm / need_x, 0.95 * fov_y_mm / need_y))


class _Canvas:
    """The volume being painted (float32 HU and uint8 labels, both (Z, Y, X)).

    ``pos[a]`` holds, for every index along array axis a (z, y, x), the LPS coordinate of that
    voxel relative to the volume centre in *standard* mm (physical mm / anatomy scale). A
    flipped direction reverses y and x, so the anatomy stays on the same physical side.
    """

    def __init__(self, shape_zyx, spacing_zyx, signs_zyx, scale: float):
        self.hu = np.full(shape_zyx, -1000.0, np.float32)
        self.labels = np.zeros(shape_zyx, np.uint8)
        self.pos = [np.float32(sg * sp / scale) * (np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2))
                    for n, sp, sg in zip(shape_zyx, spacing_zyx, signs_zyx)]

    def box(self, center, half):
        """Index slices of the voxels within ``half`` (mm, per axis) of ``center``, and their offsets.

        Offsets are float32 arrays shaped to broadcast: (nz,1,1), (1,ny,1), (1,1,nx). None when
        the box misses the volume.
        """
        slices, offsets = [], []
        for a in range(3):
            d = self.pos[a] - np.float32(center[a])
            idx = np.flatnonzero(np.abs(d) <= half[a])
            if idx.size == 0:
                return None
            slices.append(slice(int(idx[0]), int(idx[-1]) + 1))
            shape = [1, 1, 1]
            shape[a] = -1
            offsets.append(d[idx[0]: idx[-1] + 1].reshape(shape))
        return tuple(slices), offsets

    def blob(self, center, radii, waves=None):
        """Wobbly ellipsoid: ``q = sum(u^2) - sum(amp cos(w.u + phase))``, inside where q <= 1.

        ``u`` is the offset divided by ``radii`` (mm); an infinite radius gives a prism along
        that axis (q then lacks that axis' dimension). Returns (slices, q, offsets) or None.
        """
        grow = 1.0 + (float(np.abs(waves[:, 0]).sum()) if waves is not None else 0.0)
        found = self.box(center, [r * np.sqrt(grow) for r in radii])
        if found is None:
            return None
        sl, off = found
        u = [off[a] / np.float32(radii[a]) if np.isfinite(radii[a]) else np.zeros((1, 1, 1), np.float32)
             for a in range(3)]
        q = u[0] * u[0] + u[1] * u[1] + u[2] * u[2]
        for amp, wz, wy, wx, phase in (waves if waves is not None else ()):
            q -= amp * np.cos(wz * u[0] + wy * u[1] + wx * u[2] + phase)
        return sl, q, off

    def segment(self, a, b, radius: float):
        """(slices, mask) of a cylinder of ``radius`` mm around the segment a->b (zyx, mm)."""
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        mid, d = (a + b) / 2, b - a
        found = self.box(mid, np.abs(d) / 2 + radius)
        if found is None:
            return None
        sl, off = found
        rel = [off[i] + (mid[i] - a[i]) for i in range(3)]  # offsets from a
        t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / max(float(d @ d), 1e-6), 0, 1)
        dist2 = sum((rel[i] - t * d[i]) ** 2 for i in range(3))
        return sl, dist2 <= radius * radius

    def paint(self, sl, mask, hu, label=None, only_labels=None) -> None:
        """Set HU (scalar or broadcastable array) and optionally the label where ``mask``."""
        if only_labels is not None:
            mask = mask & np.isin(self.labels[sl], only_labels)
        np.copyto(self.hu[sl], hu, where=mask)
        if label is not None:
            np.copyto(self.labels[sl], np.uint8(label), where=mask)


@dataclass
class _Torso:
    """Per-case body-wall measurements (standard mm) the organs are placed against."""

    half_width: float
    half_depth: float
    cavity_x: float  # semi-axes of the abdominal cavity inside the muscle wall
    cavity_y: float
    spine_y: float   # centre of the vertebral body (posterior, +y)

    def in_cavity(self, off) -> np.ndarray:
        return (off[1] / self.cavity_y) ** 2 + (off[2] / self.cavity_x) ** 2 <= 1.0

    def clip(self, found, center):
        """Mask ``q <= 1`` of a blob, limited to the abdominal cavity (offsets shifted to body centre)."""
        sl, q, off = found
        return sl, (q <= 1) & self.in_cavity([o + np.float32(c) for o, c in zip(off, center)])


def noise_factor(spacing_zyx) -> float:
    """The share of ``NOISE_HU`` a voxel of this spacing shows (CT noise ~ 1/sqrt(voxel volume)): 1 at
    0.8 x 0.8 x 1.5 mm, 0.3 (3-6 HU) at the demo's ~2.7 x 2.7 x 4.5 mm."""
    volume = float(np.prod([float(s) for s in spacing_zyx]))
    return float(np.clip(np.sqrt(NOISE_REF_VOXEL_MM3 / volume), *NOISE_FACTOR_RANGE))


def _waves(rng: np.random.Generator, k: int, amp: float) -> np.ndarray:
    """k random smooth surface waves as float32 rows (amp, wz, wy, wx, phase)."""
    dirs = rng.normal(size=(k, 3))
    dirs *= (rng.uniform(1.5, 3.5, k) / np.linalg.norm(dirs, axis=1))[:, None]
    return np.column_stack([rng.uniform(0.3, 1.0, k) * amp, dirs, rng.uniform(0, 2 * np.pi, k)]).astype(np.float32)


def _fill(c: _Canvas, center, radii, hu: float) -> None:
    """Paint a plain ellipsoid (or prism) with one HU value, if any voxel centre falls inside."""
    found = c.blob(center, radii)
    if found is not None:
        c.paint(found[0], found[1] <= 1, hu)


def _paint_torso(c: _Canvas, rng: np.random.Generator) -> _Torso:
    hw, hd = BODY_HALF_WIDTH_MM * rng.uniform(0.9, 1.08), BODY_HALF_DEPTH_MM * rng.uniform(0.9, 1.08)
    t_fat, t_mus = rng.uniform(12, 30), rng.uniform(8, 14)
    back = 0.85 * hd  # the back lies flat on the table
    waves = _waves(rng, 2, 0.03)
    for shrink, hu in ((0.0, rng.uniform(-115, -85)), (t_fat, rng.uniform(35, 55)), (t_fat + t_mus, rng.uniform(-100, -70))):
        sl, q, off = c.blob((0, 0, 0), (INF, hd - shrink, hw - shrink), waves)
        c.paint(sl, (q <= 1) & (off[1] < back - shrink), hu)
    torso = _Torso(hw, hd, hw - t_fat - t_mus, hd - t_fat - t_mus, back - t_fat - 55)
    y, x = c.pos[1][:, None], c.pos[2][None, :]  # ribs: a bony band in the wall, upper abdomen only
    ring = ((y / (hd - t_fat - 1)) ** 2 + (x / (hw - t_fat - 1)) ** 2 <= 1) & \
           ((y / (hd - t_fat - 8)) ** 2 + (x / (hw - t_fat - 8)) ** 2 > 1) & (y > -0.3 * hd) & (np.abs(x) > 50)
    for k in range(5):
        zs = np.flatnonzero(np.abs(c.pos[0] - (120 - 30 * k + rng.uniform(-5, 5))) <= 4.5)
        if zs.size:
            c.paint(slice(zs[0], zs[-1] + 1), ring & (y < back - t_fat - 10), rng.uniform(450, 750))
    return torso


def _paint_spine_and_muscle(c: _Canvas, t: _Torso, rng: np.random.Generator) -> None:
    for side in (-1, 1):  # paraspinal muscles, then psoas
        _fill(c, (0, t.spine_y + 32, side * 38), (INF, 22, 28), rng.uniform(40, 60))
        _fill(c, (0, t.spine_y - 5, side * 42), (INF, 16, 17), rng.uniform(40, 60))
    bone = rng.uniform(650, 1000)
    _fill(c, (0, t.spine_y + 28, 0), (INF, 14, 17), bone)  # neural arch
    _fill(c, (0, t.spine_y + 44, 0), (INF, 11, 6), bone)  # spinous process
    _fill(c, (0, t.spine_y + 28, 0), (INF, 8, 9), rng.uniform(5, 20))  # spinal canal (CSF)
    found = c.blob((0, t.spine_y, 0), (INF, 17, 21))
    disc = np.mod(c.pos[0] - rng.uniform(0, 34), 34)[:, None, None] < 7
    spongy = rng.uniform(200, 300)
    if found is not None:
        sl, q, _ = found
        c.paint(sl, q <= 1, np.where(disc, np.float32(85), np.float32(spongy)))
        c.paint(sl, (q <= 1) & (q > 0.72) & ~disc, bone)  # cortical rim of the vertebral body
    _fill(c, (0, t.spine_y - 32, 18), (INF, 12, 12), rng.uniform(150, 190))  # aorta


def _paint_viscera(c: _Canvas, t: _Torso, z_liver: float, liver_hu: float, rng: np.random.Generator) -> None:
    """Bowel loops, stomach, kidneys and spleen: everything the liver must be told apart from."""
    for _ in range(rng.integers(8, 15)):
        center = (z_liver + rng.uniform(-240, -30), rng.uniform(-0.7, 0.2) * t.cavity_y, rng.uniform(-0.6, 0.7) * t.cavity_x)
        found = c.blob(center, rng.uniform(10, 20, 3), _waves(rng, 2, 0.08))
        if found is not None:
            sl, inside = t.clip(found, center)
            c.paint(sl, inside, rng.uniform(30, 45))
            c.paint(sl, inside & (found[1] < 0.6), -900.0 if rng.random() < 0.3 else rng.uniform(10, 40))
    center, radii = (z_liver + 25, -0.35 * t.cavity_y, 0.3 * t.cavity_x), (50, 35, 45)
    found = c.blob(center, radii, _waves(rng, 2, 0.06))
    if found is not None:  # stomach: wall, fluid, gas rising anteriorly (patient supine)
        sl, inside = t.clip(found, center)
        c.paint(sl, inside, rng.uniform(35, 50))
        lumen = inside & (found[1] < 0.75)
        c.paint(sl, lumen, rng.uniform(5, 25))
        c.paint(sl, lumen & (found[2][1] < -radii[1] * rng.uniform(0.2, 0.6)), -950.0)
    for side, dz in ((-1, -80), (1, -60)):  # kidneys: bright cortex, darker medulla
        center = (z_liver + dz, t.spine_y - 5, side * 68)
        found = c.blob(center, (52, 20, 25), _waves(rng, 2, 0.05))
        if found is not None:
            sl, q, _ = found
            c.paint(sl, q <= 1, rng.uniform(130, 160))
            c.paint(sl, q <= 0.45, rng.uniform(30, 80))
    center = (z_liver + 15, 0.3 * t.cavity_y, 0.6 * t.cavity_x)
    found = c.blob(center, (55, 55, 28) * rng.uniform(0.85, 1.1, 3), _waves(rng, 3, 0.1))
    if found is not None:  # spleen, at liver-like HU
        c.paint(*t.clip(found, center), liver_hu + rng.uniform(-10, 0))


def _paint_liver(c: _Canvas, t: _Torso, z_liver: float, liver_hu: float, rng: np.random.Generator) -> None:
    lobes = (((z_liver, -0.05 * t.cavity_y, -0.45 * t.cavity_x), (75, 80, 70) * rng.uniform(0.9, 1.1, 3)),
             ((z_liver + 20, -0.45 * t.cavity_y, 0.05 * t.cavity_x), (45, 30, 50) * rng.uniform(0.85, 1.15, 3)))
    for center, radii in lobes:
        found = c.blob(center, radii, _waves(rng, 4, 0.1))
        if found is not None:
            sl, inside = t.clip(found, center)
            off = found[2]
            texture = np.cos(off[0] / 23 + off[1] / 31) * np.float32(3) + np.cos(off[2] / 19) * np.float32(2)
            c.paint(sl, inside, np.float32(liver_hu) + texture, label=1)
    hilum = np.array([z_liver - 15, 0.05 * t.cavity_y, -0.2 * t.cavity_x])
    vessel_hu = rng.uniform(130, 170)
    for _ in range(rng.integers(3, 7)):  # portal/hepatic veins: bright, but labelled liver
        tip = np.asarray(lobes[0][0]) + rng.uniform(-0.7, 0.7, 3) * lobes[0][1]
        found = c.segment(hilum, tip, rng.uniform(3, 7))
        if found is not None:
            c.paint(*found, vessel_hu, only_labels=[1])
    for center, radii, hu in (((z_liver - 50, -0.35 * t.cavity_y, -0.25 * t.cavity_x), (30, 16, 18), rng.uniform(0, 15)),
                              ((0.0, t.spine_y - 30, -25), (INF, 10, 13), rng.uniform(100, 130))):
        found = c.blob(center, radii)  # gallbladder (hypodense look-alike), inferior vena cava
        if found is not None:
            c.paint(*t.clip(found, center), hu, label=0)


def _lesion_centre(c: _Canvas, depth: np.ndarray, box, radius: float, rng: np.random.Generator) -> list[float]:
    """A random liver voxel at least 0.7 ``radius`` (standard mm) inside the liver, else one of the deepest."""
    deep = np.flatnonzero(depth >= min(0.7 * radius, float(depth.max())))
    idx = np.unravel_index(deep[rng.integers(deep.size)], depth.shape)
    return [float(c.pos[a][box[a].start + idx[a]]) for a in range(3)]


def _paint_tumours(c: _Canvas, spacing_zyx, scale: float, rng: np.random.Generator) -> None:
    """0-5 lesions (label 2; none in 10 % of livers) of physical radius 6-25 mm, mostly hypodense (20-40 HU).

    Radii are log-uniform in physical mm (many small, few large), converted to standard mm by
    ``scale`` and capped at ``MAX_LESION_RADIUS_STD`` (on shrunken anatomy a 5 mm lesion would fill
    the liver) and at least 1.2 in-plane voxels. Centres lie 0.7 radius inside the liver (distance
    map of the liver's bounding box only, to stay memory-light), so lesions are not clipped to slivers.
    """
    n = rng.choice(len(LESION_COUNT_P), p=LESION_COUNT_P)
    liver = c.labels == 1
    if n == 0 or not liver.any():
        return
    box = ndimage.find_objects(liver.astype(np.uint8))[0]
    depth = ndimage.distance_transform_edt(liver[box], sampling=[s / scale for s in spacing_zyx]).astype(np.float32)
    min_radius = 1.2 * max(spacing_zyx[1:]) / scale
    lo, hi = np.log(LESION_RADIUS_MM[0]), np.log(LESION_RADIUS_MM[1])
    for _ in range(n):
        radius = max(min(float(np.exp(rng.uniform(lo, hi))) / scale, MAX_LESION_RADIUS_STD), min_radius)
        hyper = rng.random() < HYPERDENSE_P
        hu = rng.uniform(95, 125) if hyper else rng.uniform(20, 40)
        radii, waves = radius * rng.uniform(0.85, 1.15, 3), _waves(rng, 3, 0.06)
        sl, q, _ = c.blob(_lesion_centre(c, depth, box, radius, rng), radii, waves)
        c.paint(sl, q <= 1, hu, label=2, only_labels=[1, 2])
        if not hyper and radius * scale > 12:  # enhancing rim of larger hypodense lesions
            c.paint(sl, (q <= 1) & (q > 0.6), hu + 25, only_labels=[2])


def make_case(shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float], rng: np.random.Generator,
              flip_direction: bool = False, origin_xyz=(0.0, 0.0, 0.0),
              anatomy_scale: float | None = None) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One synthetic abdominal CT: int16 HU (Z, Y, X), uint8 labels (0 bg, 1 liver, 2 tumour), geometry.

    ``spacing_zyx`` is in mm. ``anatomy_scale`` shrinks the standard anatomy (None: fit the body
    to this case's in-plane field of view); pass one value for a whole dataset so organ sizes
    in mm agree across cases. ``flip_direction`` stores the image with direction
    diag(-1, -1, 1): the array is mirrored in y and x so the liver stays on the patient's right.
    Edge case: tumour radii are at least 1.2 in-plane voxels, so on coarse grids small tumours
    are larger in mm than on fine grids. Memory: ~1.9 x the int16 output plus the labels.
    """
    shape = tuple(int(n) for n in shape_zyx)
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(shape) != 3 or min(shape) < 1 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"need a 3D shape and positive spacing, got {shape_zyx}, {spacing_zyx}")
    scale = anatomy_scale or fit_anatomy_scale(shape[1] * spacing[1], shape[2] * spacing[2])
    signs = (1.0, -1.0, -1.0) if flip_direction else (1.0, 1.0, 1.0)
    c = _Canvas(shape, spacing, signs, scale)
    z_liver, liver_hu = rng.uniform(-20, 20), rng.uniform(52, 70)
    torso = _paint_torso(c, rng)
    _paint_viscera(c, torso, z_liver, liver_hu, rng)
    _paint_spine_and_muscle(c, torso, rng)
    _paint_liver(c, torso, z_liver, liver_hu, rng)
    _paint_tumours(c, spacing, scale, rng)
    sigma_vox = (rng.uniform(0.2, 0.4),) + (rng.uniform(0.4, 0.7),) * 2  # scanner PSF + partial volume
    ndimage.gaussian_filter(c.hu, sigma_vox, output=c.hu, truncate=3.0)
    noise_hu = np.float32(rng.uniform(*NOISE_HU) * noise_factor(spacing))
    step = max(1, 4_000_000 // (shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):  # noise in slabs: no full-size float64 temporaries
        slab = rng.standard_normal((min(step, shape[0] - z0),) + shape[1:], dtype=np.float32)
        slab *= noise_hu
        c.hu[z0: z0 + step] += slab
    np.clip(c.hu, -1024, 3071, out=c.hu)
    np.rint(c.hu, out=c.hu)
    direction = FLIPPED_DIRECTION if flip_direction else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    geom = Geometry(shape_zyx=list(shape), spacing_zyx=list(spacing),
                    origin_xyz=[float(o) for o in origin_xyz], direction=list(direction))
    return c.hu.astype(np.int16), c.labels, geom


def _case_grid(preset: SizePreset, shape_zyx, rng: np.random.Generator):
    """(shape_zyx, spacing_zyx mm) for one case: shape jittered +-10 % unless given."""
    if shape_zyx is None:
        shape = tuple(max(8, int(round(n * rng.uniform(0.9, 1.1)))) for n in preset.shape_zyx)
    else:
        shape = tuple(int(n) for n in shape_zyx)
    s_xy = round(float(rng.uniform(*preset.spacing_xy_mm)), 3)
    return shape, (round(float(rng.uniform(*preset.spacing_z_mm)), 3), s_xy, s_xy)


def generate_dataset(out_dir: Path, n_train: int, n_test: int = 0, seed: int = 0, shape_zyx=None,
                     size: str = "small", name: str = "Liver") -> DatasetInfo:
    """Write a synthetic liver dataset in the raw nnU-Net v2 layout into ``out_dir``.

    ``out_dir`` is the ``DatasetNNN_Name`` folder itself. Cases ``liver_000``.. (imagesTr,
    labelsTr) and ``liver_test_000``.. (imagesTs, labelsTs). Every third case (index 1, 4, ..)
    is stored with a flipped direction and a non-zero origin. One anatomy scale serves the whole
    dataset, chosen so the body fits the smallest field of view the preset can draw; each
    case's arrays depend only on (seed, split, index), byte for byte.
    """
    if size not in SIZE_PRESETS:
        raise AutosegError(f"unknown synthetic size '{size}'; use one of {', '.join(SIZE_PRESETS)}")
    if n_train < 1 or n_test < 0 or seed < 0:
        raise AutosegError(f"synthetic dataset needs n_train >= 1, n_test >= 0, seed >= 0 (got {n_train}, {n_test}, {seed})")
    if shape_zyx is not None and (len(shape_zyx) != 3 or min(shape_zyx) < 8):
        raise AutosegError(f"shape {shape_zyx}: give three sizes (z, y, x), each at least 8")
    preset = SIZE_PRESETS[size]
    jitter = 1.0 if shape_zyx is not None else 0.9
    base = shape_zyx if shape_zyx is not None else preset.shape_zyx
    lo = preset.spacing_xy_mm[0]
    scale = fit_anatomy_scale(round(base[1] * jitter) * lo, round(base[2] * jitter) * lo)
    out_dir = Path(out_dir)
    jobs = [(f"liver_{i:03d}", 0, i) for i in range(n_train)] + [(f"liver_test_{i:03d}", 1, i) for i in range(n_test)]
    for case_id, split, i in tqdm(jobs, desc="synthetic cases", unit="case"):
        rng = np.random.default_rng([seed, split, i])
        shape, spacing = _case_grid(preset, shape_zyx, rng)
        flip = i % 3 == 1
        origin = tuple(round(float(v), 1) for v in rng.uniform((-250, -250, -1200), (250, 250, 0))) if flip else (0.0, 0.0, 0.0)
        hu, labels, geom = make_case(shape, spacing, rng, flip, origin, anatomy_scale=scale)
        sub = ("imagesTr", "labelsTr") if split == 0 else ("imagesTs", "labelsTs")
        write_image(hu, geom, out_dir / sub[0] / f"{case_id}_0000.nii.gz")
        write_image(labels, geom, out_dir / sub[1] / f"{case_id}.nii.gz")
    info = DatasetInfo(name=name, channel_names={"0": "CT"}, labels=dict(LABELS), numTraining=n_train,
                       description=f"autoseg synthetic abdominal CT (size {size}, seed {seed}, anatomy scale {scale:.3f})")
    save_dataset_info(info, out_dir)
    save_json(generation_params(n_train, n_test, seed, size, shape_zyx), out_dir / PARAMS_FILE)
    return info


def generation_params(n_train: int, n_test: int, seed: int, size: str, shape_zyx=None) -> dict:
    """What :func:`generate_dataset` stores in ``synthetic.json``: the options that decide the arrays."""
    return {"n_train": int(n_train), "n_test": int(n_test), "seed": int(seed), "size": size,
            "shape_zyx": [int(v) for v in shape_zyx] if shape_zyx is not None else None}


def stored_params(out_dir: Path) -> dict | None:
    """The generation options stored beside a synthetic dataset, or None (not made by this version)."""
    path = Path(out_dir) / PARAMS_FILE
    return load_json(path) if path.is_file() else None
