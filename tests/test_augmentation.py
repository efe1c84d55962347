"""Augmentation: geometry helpers (exact), deterministic transform halves, full pipelines' outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autoseg.trainers.transforms import (
    LowResParams,
    SpatialAugmentTransform,
    SpatialParams,
    apply_lowres,
    apply_spatial,
    downsample_seg_nearest,
)
from autoseg.trainers.augmentation import (
    build_train_transforms,
    build_train_transforms_from_settings,
    build_val_transforms,
    deep_supervision_scales,
    default_augmentation_settings,
    initial_patch_size,
)


def test_initial_patch_size_hand_computed():
    # 2D 64x64 at 15 deg: 64 (cos 15 + sin 15) = 78.38, / 0.85 = 92.2 -> 93
    assert initial_patch_size([64, 64], 15) == [93, 93]
    # 3D 32x64x64 at 30 deg: axis 0 max(32 cos30 + 64 sin30) = 59.71 / 0.85 = 70.2 -> 71;
    # axes 1, 2: 64 (cos30 + sin30) = 87.43 / 0.85 = 102.9 -> 103
    assert initial_patch_size([32, 64, 64], 30) == [71, 103, 103]
    # 2D square at 180 deg (capped at 90): worst case 45 deg, 64 sqrt(2) / 0.85 = 106.5 -> 107
    assert initial_patch_size([64, 64], 180) == [107, 107]
    # no rotation, no zoom-out: the patch itself; pseudo-2D keeps axis 0
    assert initial_patch_size([8, 40, 40], 0, (1.0, 1.0)) == [8, 40, 40]
    assert initial_patch_size([8, 64, 64], 180, do_dummy_2d=True) == [8, 107, 107]


def test_default_settings_follow_nnunet():
    s3 = default_augmentation_settings([32, 64, 64])
    assert (s3.rotation_deg, s3.do_dummy_2d, s3.mirror_axes) == (30.0, False, (0, 1, 2))
    aniso = default_augmentation_settings([8, 128, 128])  # 128 / 8 = 16 > 3
    assert aniso.do_dummy_2d and aniso.rotation_deg == 180.0 and aniso.initial_patch_size[0] == 8
    assert default_augmentation_settings([64, 64]).rotation_deg == 180.0
    assert default_augmentation_settings([32, 96]).rotation_deg == 15.0


def test_deep_supervision_scales():
    strides = [[1, 1, 1], [2, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert deep_supervision_scales(strides, 3) == [[1, 1, 1], [0.5, 0.5, 0.5], [0.5, 0.25, 0.25]]
    assert deep_supervision_scales(strides, 1) == [[1.0, 1.0, 1.0]]
    with pytest.raises(ValueError):
        deep_supervision_scales(strides, 5)


def test_downsample_seg_nearest_picks_centre_voxels():
    seg = np.arange(8).reshape(1, 1, 2, 4)  # (B, C, Y, X)
    out = downsample_seg_nearest(seg, [1.0, 0.5])
    assert out.tolist() == [[[[1, 3], [5, 7]]]]
    assert downsample_seg_nearest(seg, [0.5, 0.5]).tolist() == [[[[5, 7]]]]
    assert downsample_seg_nearest(seg, [1.0, 1.0]) is seg


def test_spatial_matrix_and_exact_90_degree_rotation():
    m = SpatialParams((math.pi / 2,), 1.0).matrix(2)
    np.testing.assert_allclose(m, [[0, -1], [1, 0]], atol=1e-12)
    assert SpatialParams((), 1.0).matrix(3) is None
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 6, 6)).astype(np.float32)
    seg = rng.integers(0, 3, (1, 6, 6)).astype(np.int8)
    out_img, out_seg = apply_spatial(img, seg, m, [6, 6])
    # output (i, j) reads input (5 - j, i): a clockwise quarter turn
    np.testing.assert_allclose(out_img, np.rot90(img, k=-1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_array_equal(out_seg, np.rot90(seg, k=-1, axes=(1, 2)))


def test_apply_spatial_identity_matrix_is_a_centre_crop_and_borders_are_filled():
    img = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    seg = (img > 50).astype(np.int8)
    out_img, out_seg = apply_spatial(img, seg, np.eye(2), [6, 6])  # interpolation path, integer positions
    np.testing.assert_allclose(out_img, img[:, 2:8, 2:8], atol=1e-4)
    np.testing.assert_array_equal(out_seg, seg[:, 2:8, 2:8])
    crop_img, _ = apply_spatial(img, seg, None, [6, 6])  # no-interpolation path agrees
    np.testing.assert_array_equal(crop_img, img[:, 2:8, 2:8])
    small = np.ones((1, 4, 4), np.float32)
    big_img, big_seg = apply_spatial(small, np.full((1, 4, 4), 2, np.int8), np.eye(2), [8, 8],
                                     border_value_data=5.0, border_value_seg=0)
    assert np.allclose(big_img[0, 2:6, 2:6], 1) and np.allclose(big_img[0, 0], 5)
    assert (big_seg[0, 2:6, 2:6] == 2).all() and (big_seg[0, 0] == 0).all()


def test_lowres_spares_ignored_axes_and_keeps_constants():
    img = np.stack([np.full((8, 8), float(z)) for z in range(4)])[None].astype(np.float32)  # (1, 4, 8, 8)
    out = apply_lowres(img.copy(), LowResParams((0,), (0.5,)), ignore_axes=(0,))
    np.testing.assert_allclose(out, img, atol=1e-6)  # each slice constant, slices kept apart
    ramp = np.tile(np.arange(8, dtype=np.float32), (1, 8, 1))  # (1, 8, 8) ramp along X
    out = apply_lowres(ramp.copy(), LowResParams((0,), (0.5,)))
    assert not np.allclose(out, ramp) and out.min() >= 0 and out.max() <= 7
    untouched = apply_lowres(ramp.copy(), LowResParams((), ()))
    np.testing.assert_array_equal(untouched, ramp)


def test_spatial_transform_keeps_image_and_labels_aligned():
    """Image == labels before; after forced rotation+scaling, rounding the image gives the labels."""
    np.random.seed(0)
    seg = np.zeros((2, 1, 20, 40, 40), np.int8)
    seg[:, :, 4:16, 8:30, 10:34] = 1
    seg[:, :, 8:12, 15:22, 12:20] = 2
    batch = {"data": seg.astype(np.float32), "target": seg.copy()}
    t = SpatialAugmentTransform([12, 24, 24], 30, (0.8, 1.2), p_rotation=1.0, p_scale=1.0)
    for _ in range(3):
        out = t(**{k: v.copy() for k, v in batch.items()})
        assert out["data"].shape == (2, 1, 12, 24, 24) and out["target"].dtype == np.int8
        agree = (np.rint(out["data"]) == out["target"]).mean()
        assert agree > 0.95


def _liver_batch(b: int, shape: tuple[int, ...]) -> dict:
    rng = np.random.default_rng(1)
    target = np.zeros((b, 1, *shape), np.int8)
    centre = tuple(slice(s // 4, 3 * s // 4) for s in shape)
    target[(slice(None), slice(None), *centre)] = 1
    target[(slice(None), slice(None), *(slice(s // 2 - 1, s // 2 + 1) for s in shape))] = 2
    target[(slice(None), slice(None), *(slice(0, 2) for _ in shape))] = -1
    data = rng.normal(size=(b, 2, *shape)).astype(np.float32)
    return {"data": data, "target": target, "keys": ["x"] * b}


@pytest.mark.parametrize("patch", [[16, 24, 24], [4, 32, 32], [24, 24]])
def test_train_pipeline_shapes_labels_and_ds_targets(patch):
    np.random.seed(3)
    settings = default_augmentation_settings(patch)
    dim = len(patch)
    strides = [[1] * dim, [2] * dim, [2] * dim] if patch != [4, 32, 32] else [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    ds = deep_supervision_scales(strides, 3)
    transform = build_train_transforms_from_settings(settings, ds)
    assert settings.do_dummy_2d == (patch == [4, 32, 32])
    for _ in range(6):
        out = transform(**_liver_batch(2, tuple(settings.initial_patch_size)))
        assert out["data"].dtype == torch.float32 and tuple(out["data"].shape) == (2, 2, *patch)
        assert isinstance(out["target"], list) and len(out["target"]) == 3
        for scale, t in zip(ds, out["target"]):
            assert t.dtype == torch.int64
            assert tuple(t.shape) == (2, 1, *[round(p * s) for p, s in zip(patch, scale)])
            assert set(torch.unique(t).tolist()) <= {0, 1, 2}
        assert out["keys"] == ["x", "x"]


def test_train_pipeline_without_ds_mirror_or_spatial_change_returns_single_tensor():
    np.random.seed(0)
    transform = build_train_transforms([8, 16, 16], 0.0, (1.0, 1.0), mirror_axes=None)
    batch = _liver_batch(2, (8, 16, 16))
    out = transform(**batch)
    assert isinstance(out["target"], torch.Tensor) and tuple(out["target"].shape) == (2, 1, 8, 16, 16)
    expected = np.where(_liver_batch(2, (8, 16, 16))["target"] == -1, 0, _liver_batch(2, (8, 16, 16))["target"])
    np.testing.assert_array_equal(out["target"].numpy(), expected)  # no geometric change: labels untouched


def test_val_pipeline_maps_outside_to_background_and_downsamples():
    batch = _liver_batch(2, (8, 16, 16))
    expected = np.where(batch["target"] == -1, 0, batch["target"])
    data = batch["data"].copy()
    out = build_val_transforms([[1, 1, 1], [0.5, 0.5, 0.5]])(**batch)
    np.testing.assert_array_equal(out["data"].numpy(), data)
    np.testing.assert_array_equal(out["target"][0].numpy(), expected)
    np.testing.assert_array_equal(out["target"][1].numpy(), expected[:, :, 1::2, 1::2, 1::2])
    single = build_val_transforms(None)(**_liver_batch(1, (8, 16, 16)))
    assert single["target"].min() == 0 and single["target"].dtype == torch.int64


def test_elastic_option_uses_batchgenerators_path_with_same_output_format():
    np.random.seed(1)
    transform = build_train_transforms([8, 16, 16], 30, do_elastic=True, ds_scales=[[1, 1, 1], [0.5, 0.5, 0.5]])
    out = transform(**_liver_batch(2, (10, 20, 20)))
    assert tuple(out["data"].shape) == (2, 2, 8, 16, 16)
    assert tuple(out["target"][1].shape) == (2, 1, 4, 8, 8)
    assert set(torch.unique(out["target"][0]).tolist()) <= {0, 1, 2}
