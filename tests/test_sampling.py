"""Patch sampling from memory-mapped preprocessed cases: boxes, crops, padding, oversampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import AutosegError
from autoseg.io.images import Geometry
from autoseg.preprocessing.case_store import CaseProperties, save_case
from autoseg.trainers.sampling import (
    PatchBox,
    PatchSampler,
    crop_into,
    lower_bound_range,
    n_forced_per_batch,
)


def write_case(folder: Path, case_id: str, seg: np.ndarray, n_channels: int = 1) -> np.ndarray:
    """Save a case whose image encodes each voxel's flat index (so crops can be checked exactly)."""
    spatial = seg.shape
    data = np.arange(n_channels * int(np.prod(spatial)), dtype=np.float32).reshape(n_channels, *spatial) + 1
    seg4 = seg[None].astype(np.int8)
    locs = {str(k): np.argwhere(seg4 == k).tolist() for k in (1, 2) if (seg4 == k).any()}
    props = CaseProperties(case_id, Geometry(list(spatial), [1.0, 1.0, 1.0]), [[0, s] for s in spatial],
                           list(spatial), [1.0, 1.0, 1.0], list(spatial), locs)
    save_case(folder, data, seg4, props)
    return data


def liver_cases(folder: Path) -> dict[str, np.ndarray]:
    """Two 24x48x48 cases: A with liver and an 8-voxel tumour, B with liver only; -1 in a corner."""
    seg_a = np.zeros((24, 48, 48), np.int8)
    seg_a[6:18, 12:36, 12:36] = 1
    seg_a[11:13, 30:32, 14:16] = 2
    seg_a[:2, :4, :4] = -1
    seg_b = np.zeros((24, 48, 48), np.int8)
    seg_b[4:10, 20:30, 5:15] = 1
    return {"A": write_case(folder, "A", seg_a), "B": write_case(folder, "B", seg_b)}


def reference_crop(src: np.ndarray, box: PatchBox) -> np.ndarray:
    """The box cut from ``src`` zero-padded by 64 on every side (independent of crop_into)."""
    pad = 64
    padded = np.pad(src, [(0, 0)] + [(pad, pad)] * (src.ndim - 1))
    sl = tuple(slice(lo + pad, lo + pad + s) for lo, s in zip(box.lower, box.size))
    return padded[(slice(None), *sl)]


def test_crop_into_pads_outside_with_untouched_zeros():
    src = np.array([[10, 11, 12, 13]], dtype=np.float32)
    out = np.zeros((1, 3), np.float32)
    crop_into(src, (-1,), (3,), out)
    assert out.tolist() == [[0, 10, 11]]
    out = np.zeros((1, 3), np.float32)
    crop_into(src, (3,), (3,), out)
    assert out.tolist() == [[13, 0, 0]]
    out = np.zeros((1, 2), np.float32)
    crop_into(src, (7,), (2,), out)  # entirely outside
    assert out.tolist() == [[0, 0]]


def test_lower_bound_range_hand_examples():
    assert lower_bound_range(10, 8, 4) == (-2, 4)  # need 4: image padded by 2 each side
    assert lower_bound_range(4, 8, 8) == (-2, -2)  # smaller than the patch: centred
    assert lower_bound_range(10, 4, 4) == (0, 6)
    assert lower_bound_range(5, 8, 8) == (-1, -1)  # need 3: one voxel before, two after
    assert lower_bound_range(7, 1, 1) == (0, 6)  # the slice axis of 2D sampling


def test_n_forced_per_batch():
    assert n_forced_per_batch(2, 0.33) == 1
    assert n_forced_per_batch(12, 0.33) == 4
    assert n_forced_per_batch(3, 0.33) == 1
    assert n_forced_per_batch(4, 0.0) == 0
    assert n_forced_per_batch(4, 1.0) == 4
    assert n_forced_per_batch(50, 0.01) == 1  # at least one when p > 0


def test_batch_shapes_dtypes_and_exact_crops(tmp_path):
    src = liver_cases(tmp_path)
    sampler = PatchSampler(tmp_path, ["A", "B"], [8, 16, 16], batch_size=3, seed=1)
    for _ in range(5):
        batch = sampler.next_batch()
        assert batch["data"].shape == (3, 1, 8, 16, 16) and batch["data"].dtype == np.float32
        assert batch["target"].shape == (3, 1, 8, 16, 16) and batch["target"].dtype == np.int8
        assert set(batch["keys"]) <= {"A", "B"}
    # the deterministic half: any box, in or partly outside, equals an independent padded slice
    seg_a = np.load(tmp_path / "A_seg.npy")
    for lower in [(0, 0, 0), (-3, 40, -5), (20, 10, 36), (5, 5, 5)]:
        box = PatchBox("A", lower, (8, 16, 16))
        d, t = np.zeros((1, 8, 16, 16), np.float32), np.zeros((1, 8, 16, 16), np.int8)
        sampler.crop(box, d, t)
        np.testing.assert_array_equal(d, reference_crop(src["A"], box))
        np.testing.assert_array_equal(t, reference_crop(seg_a, box))


def test_forced_samples_contain_their_class_and_tumour_is_oversampled(tmp_path):
    liver_cases(tmp_path)
    sampler = PatchSampler(tmp_path, ["A", "B"], [8, 16, 16], batch_size=3, seed=2)
    n_batches, n_forced, tumour_forced = 60, 0, 0
    for _ in range(n_batches):
        batch = sampler.next_batch()
        assert batch["forced_class"][:2] == [None, None]  # only the last third is forced
        cls = batch["forced_class"][2]
        assert cls is not None  # both cases have foreground
        n_forced += 1
        assert (batch["target"][2] == cls).any()
        tumour_forced += cls == 2
    assert n_forced == n_batches
    # tumour only exists in A (drawn half the time), then chosen among {1, 2} half the time: ~1/4
    assert 0.1 < tumour_forced / n_batches < 0.45

    def tumour_rate(p: float) -> float:
        s = PatchSampler(tmp_path, ["A", "B"], [8, 16, 16], batch_size=2, oversample_foreground_percent=p, seed=3)
        return np.mean([(s.next_batch()["target"] == 2).any(axis=(1, 2, 3, 4)).mean() for _ in range(80)])

    assert tumour_rate(0.5) > 1.5 * tumour_rate(0.0)


def test_forced_voxel_lies_in_central_half_when_not_clipped(tmp_path):
    seg = np.zeros((40, 80, 80), np.int8)
    seg[20, 40, 40] = 2  # a single voxel far from the borders: never clipped
    write_case(tmp_path, "C", seg)
    sampler = PatchSampler(tmp_path, ["C"], [8, 16, 16], batch_size=1, oversample_foreground_percent=1.0, seed=0)
    seen = set()
    for _ in range(30):
        box = sampler.sample_box("C", (40, 80, 80), forced=True)
        assert box.forced_class == 2
        offset = tuple(v - lo for v, lo in zip((20, 40, 40), box.lower))
        assert 2 <= offset[0] <= 5 and 4 <= offset[1] <= 11 and 4 <= offset[2] <= 11
        seen.add(offset)
    assert len(seen) > 5  # shifted at random, not always centred


def test_case_smaller_than_patch_is_centred_and_zero_padded(tmp_path):
    seg = np.ones((6, 10, 12), np.int8)
    src = write_case(tmp_path, "S", seg)
    sampler = PatchSampler(tmp_path, ["S"], [8, 16, 16], batch_size=2, seed=0)
    batch = sampler.next_batch()
    for i in range(2):
        # lower = (-1, -3, -2): the case sits at [1:7, 3:13, 2:14], zeros elsewhere
        np.testing.assert_array_equal(batch["data"][i, :, 1:7, 3:13, 2:14], src)
        assert batch["data"][i].sum() == src.sum()
        assert batch["target"][i].sum() == seg.sum()


def test_initial_patch_size_is_what_is_sampled_and_may_pass_the_border(tmp_path):
    liver_cases(tmp_path)
    sampler = PatchSampler(tmp_path, ["A"], [8, 16, 16], batch_size=2, seed=0, initial_patch_size=[12, 24, 24])
    assert sampler.next_batch()["data"].shape == (2, 1, 12, 24, 24)
    lowers = np.array([sampler.sample_box("A", (24, 48, 48), False).lower for _ in range(300)])
    # (initial - final) / 2 = (2, 4, 4) voxels of virtual padding on each side
    assert lowers.min(axis=0).tolist() == [-2, -4, -4]
    assert lowers.max(axis=0).tolist() == [24 - 12 + 2, 48 - 24 + 4, 48 - 24 + 4]
    with pytest.raises(AutosegError):
        PatchSampler(tmp_path, ["A"], [8, 16, 16], 2, initial_patch_size=[4, 24, 24])


def test_2d_sampling_takes_slices_and_forced_slices_contain_the_class(tmp_path):
    src = liver_cases(tmp_path)
    sampler = PatchSampler(tmp_path, ["A", "B"], [16, 16], batch_size=2, seed=4)
    for _ in range(20):
        batch = sampler.next_batch()
        assert batch["data"].shape == (2, 1, 16, 16) and batch["target"].shape == (2, 1, 16, 16)
        cls = batch["forced_class"][1]
        assert (batch["target"][1] == cls).any()
    box = sampler.sample_box("A", (24, 48, 48), forced=False)
    assert box.size == (1, 16, 16)
    d, t = np.zeros((1, 16, 16), np.float32), np.zeros((1, 16, 16), np.int8)
    sampler.crop(box, d, t)
    np.testing.assert_array_equal(d, reference_crop(src["A"], box)[:, 0])


def test_same_seed_same_batches_different_seed_different(tmp_path):
    liver_cases(tmp_path)

    def batches(seed: int) -> list[dict]:
        s = PatchSampler(tmp_path, ["A", "B"], [8, 16, 16], batch_size=2, seed=seed)
        return [s.next_batch() for _ in range(4)]

    a, b, c = batches(7), batches(7), batches(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["data"], y["data"])
        assert x["keys"] == y["keys"]
    assert any(not np.array_equal(x["data"], z["data"]) for x, z in zip(a, c))


def test_batch_size_one_is_forced_with_probability_p(tmp_path):
    liver_cases(tmp_path)
    sampler = PatchSampler(tmp_path, ["A", "B"], [8, 16, 16], batch_size=1, oversample_foreground_percent=0.33, seed=5)
    forced = [sampler.next_batch()["forced_class"][0] is not None for _ in range(300)]
    assert 0.25 < np.mean(forced) < 0.42


def test_case_without_foreground_gives_a_random_crop_even_when_forced(tmp_path):
    write_case(tmp_path, "E", np.zeros((10, 20, 20), np.int8))
    sampler = PatchSampler(tmp_path, ["E"], [8, 16, 16], batch_size=2, oversample_foreground_percent=1.0)
    assert sampler.next_batch()["forced_class"] == [None, None]


def test_user_errors_name_the_file(tmp_path):
    liver_cases(tmp_path)
    (tmp_path / "B_seg.npy").unlink()
    sampler = PatchSampler(tmp_path, ["B"], [8, 16, 16], batch_size=1)
    with pytest.raises(AutosegError, match="B_seg.npy"):
        sampler.next_batch()
    with pytest.raises(AutosegError, match="no training cases"):
        PatchSampler(tmp_path, [], [8, 16, 16], batch_size=1)
