"""Patch sampling with foreground oversampling, cropped straight from memory-mapped cases.

Random = sample, then apply: :meth:`PatchSampler.sample_box` draws *where* a patch comes from
(a :class:`PatchBox`); :func:`crop_into` cuts it out, deterministically, copying only the part of
the box that lies inside the image into a zero-filled batch array (no ``np.pad``, no whole-case
reads: a memmap slice touches only the pages of the patch).

Batch layout (what :meth:`PatchSampler.next_batch` returns)::

    {"data":   float32 (B, C, *size),   size = initial_patch_size or patch_size
     "target": int8    (B, 1, *size),   labels 0..K-1, and -1 (outside the nonzero mask) kept as is
     "keys":   [case_id] * B,
     "forced_class": [label or None] * B}

For a 2D ``patch_size`` of a 3D case, each sample is one slice along the first spatial axis and
``size`` has two entries: ``data`` is (B, C, Y, X).

Foreground oversampling (nnU-Net's scheme, made explicit): in a batch of ``B >= 2`` samples the
last ``n_forced = B - round(B * (1 - p))`` samples (at least one when ``p > 0``) are *forced*:
centred on a random stored voxel of a foreground class chosen uniformly among the classes present in
the case (so a rare tumour class is drawn as often as the liver), then shifted at random so the
voxel lies anywhere in the central half of the final patch. ``B == 1``: the sample is forced with
probability ``p``. A case without foreground gives a random crop even when forced. With
``rare_class_bias`` b, a forced sample is centred on the case's rarest present class with
probability b (else as above): small lesions are found more often.

Two-stage training (``roi_jitter``): a case stored as a box around its foreground records the
box stage 2 sees at prediction (``roi_core_zyx``); each sample draws a jittered box (every face moved
by up to the stored reserve) and the patch is zero (image and label) outside it, so the network
learns boxes a little larger, smaller or shifted, as stage 1 will give them.

Edge case that bites: with ``initial_patch_size`` larger than ``patch_size`` the sampled box may
extend ``(initial - patch) / 2`` past the image on each side (zero-padded), so that the final
centre crop reaches the image border as often as the interior (nnU-Net's ``need_to_pad``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from autoseg.errors import AutosegError
from autoseg.preprocessing.case_store import case_paths

MAX_LOCATIONS_PER_CLASS = 2000  # cached per case and class; bounds a worker's memory for big datasets


@dataclass(frozen=True)
class PatchBox:
    """Where one patch is cut from one case.

    ``lower``/``size``: start and extent per spatial axis of the *case* (Z, Y, X in the plan's
    transposed order). ``lower`` may be negative and ``lower + size`` may pass the case's extent:
    those voxels are zero. For 2D sampling of a 3D case ``size[0] == 1`` and that axis is dropped
    from the output. ``forced_class``: the foreground label the box was centred on, else None.
    """

    case_id: str
    lower: tuple[int, ...]
    size: tuple[int, ...]
    forced_class: int | None = None
    keep: tuple[tuple[int, int], ...] | None = None  # two-stage jitter: the visible box in case coordinates


def crop_into(src: np.ndarray, lower: tuple[int, ...], size: tuple[int, ...], out: np.ndarray) -> None:
    """Copy ``src[:, lower:lower+size]`` into ``out`` (C, *size); voxels outside ``src`` are left as they are.

    ``src``: (C, *spatial), typically a read-only memmap. ``out`` must be zero-filled beforehand
    for zero padding. Example: ``src`` (1, 4), lower (-1,), size (3,) writes ``src[0, 0:2]`` into
    ``out[0, 1:3]`` and leaves ``out[0, 0]``.
    """
    src_slices, out_slices = [slice(None)], [slice(None)]
    for lo, s, n in zip(lower, size, src.shape[1:]):
        a, b = max(lo, 0), min(lo + s, n)
        if b <= a:  # the box misses the image on this axis: all padding
            return
        src_slices.append(slice(a, b))
        out_slices.append(slice(a - lo, b - lo))
    out[tuple(out_slices)] = src[tuple(src_slices)]


def lower_bound_range(extent: int, sampled: int, final: int) -> tuple[int, int]:
    """Inclusive range of box starts along one axis (nnU-Net's ``need_to_pad`` rule).

    ``extent``: image size; ``sampled``: box size; ``final``: size after the augmentation's centre
    crop. The image is virtually padded by ``need = max(sampled - final, sampled - extent)`` split
    evenly (odd remainder after it). Example: extent 10, sampled 8, final 4 gives need 4, range
    (-2, 4); extent 4, sampled = final = 8 gives need 4, range (-2, -2) (image centred).
    """
    need = max(sampled - final, sampled - extent, 0)
    lb = -(need // 2)
    ub = extent + need // 2 + need % 2 - sampled
    return lb, ub


def n_forced_per_batch(batch_size: int, oversample_foreground_percent: float) -> int:
    """How many of the last samples of a batch (``B >= 2``) are forced to foreground.

    ``B - round(B * (1 - p))``, at least 1 when ``p > 0``: B=2, p=0.33 -> 1; B=12 -> 4; p=0 -> 0.
    """
    p = oversample_foreground_percent
    n = batch_size - int(round(batch_size * (1 - p)))
    return max(n, 1) if p > 0 else 0


class PatchSampler:
    """Draws training batches of patches from preprocessed cases (see the module docstring).

    ``folder``: a preprocessed data folder (``<case>.npy``, ``<case>_seg.npy``, ``<case>.json``).
    ``patch_size``: final patch (2 or 3 entries, the network's input); ``initial_patch_size``:
    the larger size actually sampled when spatial augmentation crops afterwards. ``seed`` seeds
    this sampler's own ``numpy.random.Generator`` (give each worker a distinct seed).
    """

    def __init__(self, folder: Path, case_ids: list[str], patch_size: list[int], batch_size: int,
                 oversample_foreground_percent: float = 0.33, seed: int = 0,
                 initial_patch_size: list[int] | None = None, rare_class_bias: float = 0.0,
                 roi_jitter: bool = False) -> None:
        self.folder = Path(folder)
        if not case_ids:
            raise AutosegError(f"{self.folder}: no training cases given; check the split or re-run preprocessing")
        if len(patch_size) not in (2, 3):
            raise AutosegError(f"patch size {patch_size}: need 2 or 3 entries; fix the plans")
        size = list(initial_patch_size) if initial_patch_size is not None else list(patch_size)
        if len(size) != len(patch_size) or any(s < p for s, p in zip(size, patch_size)):
            raise AutosegError(f"initial patch size {size} must have patch size {patch_size}'s length and be "
                               "at least as large per axis; fix the augmentation settings")
        if batch_size < 1 or not 0.0 <= oversample_foreground_percent <= 1.0:
            raise AutosegError(f"batch size {batch_size} / oversampling {oversample_foreground_percent}: need "
                               "batch size >= 1 and oversampling in [0, 1]; fix the plans or trainer options")
        self.case_ids = list(case_ids)
        self.patch_size = [int(p) for p in patch_size]
        self.sampled_size = [int(s) for s in size]
        self.batch_size = int(batch_size)
        self.oversample_foreground_percent = float(oversample_foreground_percent)
        self.rng = np.random.default_rng(seed)
        self._n_forced = n_forced_per_batch(self.batch_size, self.oversample_foreground_percent)
        self._locations: dict[str, dict[int, np.ndarray]] = {}
        self._cores: dict[str, list[list[int]] | None] = {}
        self._num_channels: int | None = None
        self.rare_class_bias, self.roi_jitter = float(rare_class_bias), bool(roi_jitter)

    # -- random half ------------------------------------------------------------------------
    def is_forced(self, index_in_batch: int) -> bool:
        """Whether sample ``index_in_batch`` must contain foreground (draws from the rng when ``B == 1``)."""
        if self.batch_size == 1:
            return bool(self.rng.random() < self.oversample_foreground_percent)
        return index_in_batch >= self.batch_size - self._n_forced

    def sample_box(self, case_id: str, case_shape: tuple[int, ...], forced: bool) -> PatchBox:
        """Draw where to cut a patch from a case of spatial shape ``case_shape`` (Z, Y, X)."""
        n_extra = len(case_shape) - len(self.patch_size)
        if n_extra not in (0, 1):
            raise AutosegError(f"{self.folder / case_id}.npy: {len(case_shape)} spatial axes cannot give "
                               f"{len(self.patch_size)}D patches; re-run preprocessing for this configuration")
        sampled = [1] * n_extra + self.sampled_size
        final = [1] * n_extra + self.patch_size
        ranges = [lower_bound_range(n, s, f) for n, s, f in zip(case_shape, sampled, final)]
        forced_class, keep = None, self.jittered_box(case_id, case_shape) if self.roi_jitter else None
        if forced:
            locations = self.class_locations(case_id)
            present = sorted(c for c, locs in locations.items() if len(locs))
            if present:
                forced_class = self.choose_class(present, locations)
                locs = locations[forced_class]
                voxel = locs[int(self.rng.integers(len(locs)))]
                # the voxel lands in the central half of the final patch, which sits centred in the box
                offset = [(s - f) // 2 + int(self.rng.integers(f // 4, f - f // 4)) for s, f in zip(sampled, final)]
                lower = [int(np.clip(v - o, lb, ub)) for v, o, (lb, ub) in zip(voxel, offset, ranges)]
                return PatchBox(case_id, tuple(lower), tuple(sampled), forced_class, keep)
        lower = [int(self.rng.integers(lb, ub + 1)) for lb, ub in ranges]
        return PatchBox(case_id, tuple(lower), tuple(sampled), forced_class, keep)

    def choose_class(self, present: list[int], locations: dict[int, np.ndarray]) -> int:
        """The class a forced sample is centred on: the rarest (fewest stored voxels) with probability
        ``rare_class_bias``, else uniformly among those present."""
        if len(present) > 1 and self.rng.random() < self.rare_class_bias:
            return min(present, key=lambda c: (len(locations[c]), c))
        return present[int(self.rng.integers(len(present)))]

    def jittered_box(self, case_id: str, case_shape: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
        """Every face of the case's core box moved by up to its reserve (the stored margin beyond the core)."""
        core = self.roi_core(case_id)
        if core is None or len(core) != len(case_shape):
            return None
        out = []
        for (lo, hi), n in zip(core, case_shape):
            a = int(self.rng.integers(0, 2 * lo + 1)) if lo > 0 else 0
            r = int(n) - hi
            b = int(self.rng.integers(hi - r, int(n) + 1)) if r > 0 else int(n)
            out.append((min(a, lo), max(b, hi)) if b - a < 2 else (a, b))
        return tuple(out)

    # -- deterministic half -----------------------------------------------------------------
    def open_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped image (C, *spatial) float32 and label (1, *spatial) int8 of one case."""
        data_path, seg_path, _ = case_paths(self.folder, case_id)
        try:
            data = np.load(data_path, mmap_mode="r")
        except FileNotFoundError:
            raise AutosegError(f"{data_path}: missing; re-run preprocessing") from None
        if not seg_path.is_file():
            raise AutosegError(f"{seg_path}: missing; training needs the label, re-run preprocessing")
        seg = np.load(seg_path, mmap_mode="r")
        if seg.shape[1:] != data.shape[1:]:
            raise AutosegError(f"{seg_path}: shape {seg.shape} does not match image {data.shape}; "
                               "re-run preprocessing for this case")
        if self._num_channels is None:
            self._num_channels = data.shape[0]
        elif data.shape[0] != self._num_channels:
            raise AutosegError(f"{data_path}: {data.shape[0]} channels, other cases have {self._num_channels}; "
                               "re-run preprocessing")
        return data, seg

    def roi_core(self, case_id: str) -> list[list[int]] | None:
        """The two-stage core box of a case (``roi_core_zyx`` in its ``.json``), cached; None if absent."""
        if case_id not in self._cores:
            self.class_locations(case_id)
        return self._cores.get(case_id)

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]:
        """Stored foreground voxels per label as int32 (N, n_spatial) (channel index dropped), cached.

        Read with plain ``json`` (5x faster than building the whole CaseProperties) and thinned to
        at most ``MAX_LOCATIONS_PER_CLASS`` evenly strided entries so a worker's cache stays small.
        """
        cached = self._locations.get(case_id)
        if cached is not None:
            return cached
        json_path = case_paths(self.folder, case_id)[2]
        try:
            with open(json_path) as f:
                meta = json.load(f)
            raw = meta.get("class_locations", {}) or {}
            self._cores[case_id] = meta.get("roi_core_zyx")
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise AutosegError(f"{json_path}: unreadable case properties ({e}); re-run preprocessing") from None
        locations = {}
        for label, coords in raw.items():
            arr = np.asarray(coords, dtype=np.int32)
            if arr.ndim != 2 or len(arr) == 0:
                locations[int(label)] = np.zeros((0, 0), dtype=np.int32)
                continue
            step = -(-len(arr) // MAX_LOCATIONS_PER_CLASS)  # ceil division
            locations[int(label)] = np.ascontiguousarray(arr[::step, 1:])
        self._locations[case_id] = locations
        return locations

    def crop(self, box: PatchBox, data_out: np.ndarray, target_out: np.ndarray,
             arrays: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Cut ``box`` into ``data_out`` (C, *out) and ``target_out`` (1, *out), both zero-filled.

        ``arrays``: the case's (data, seg) if already open, else they are memory-mapped here.
        """
        data, seg = arrays if arrays is not None else self.open_case(box.case_id)
        if len(box.size) != data_out.ndim - 1:  # 2D from 3D: view the output with the slice axis
            data_out, target_out = data_out[:, None], target_out[:, None]
        crop_into(data, box.lower, box.size, data_out)
        crop_into(seg, box.lower, box.size, target_out)
        if box.keep is not None:  # two-stage jitter: nothing outside the drawn box exists
            hidden = np.ones(data_out.shape[1:], dtype=bool)
            hidden[tuple(slice(max(0, a - lo), max(0, b - lo)) for (a, b), lo in zip(box.keep, box.lower))] = False
            data_out[:, hidden] = 0
            target_out[:, hidden] = 0

    # -- batches ----------------------------------------------------------------------------
    def next_batch(self) -> dict:
        """One batch dict (see the module docstring)."""
        boxes, opened = [], []
        for i in range(self.batch_size):
            case_id = self.case_ids[int(self.rng.integers(len(self.case_ids)))]
            opened.append(self.open_case(case_id))
            boxes.append(self.sample_box(case_id, tuple(opened[-1][0].shape[1:]), self.is_forced(i)))
        data_batch = np.zeros((self.batch_size, self._num_channels, *self.sampled_size), dtype=np.float32)
        target_batch = np.zeros((self.batch_size, 1, *self.sampled_size), dtype=np.int8)
        for i, box in enumerate(boxes):
            self.crop(box, data_batch[i], target_batch[i], opened[i])
        return {"data": data_batch, "target": target_batch, "keys": [b.case_id for b in boxes],
                "forced_class": [b.forced_class for b in boxes]}

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.next_batch()

    def __next__(self) -> dict:
        return self.next_batch()
