"""CPU plans keep the anatomy's sides: canonical orientation in preprocessing, no left-right mirroring."""

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from autoseg.inference.export import segment
from autoseg.inference.sliding_window import SlidingWindowSettings, mirror_combinations, predict_sliding_window
from autoseg.io.images import Geometry
from autoseg.planners.cpu_planner import keep_orientation
from autoseg.planners.plans import Plans
from autoseg.preprocessing.preprocessor import onehot_previous_stage, preprocess_case
from autoseg.preprocessing.roi import preprocess_roi_case
from autoseg.trainers.augmentation import default_augmentation_settings

from conftest import blob_case
from test_predict import FLIPPED, tiny_config

LABELS = {"background": 0, "liver": 1, "tumor": 2}


def _plans(cfg, tf=(0, 1, 2)) -> Plans:
    tf = list(tf)
    return Plans("D", "p", 8, tf, [tf.index(i) for i in range(3)], [2.5, 1.0, 1.0], [10, 20, 18], 1, dict(LABELS), {cfg.name: cfg})


def _two_ways(shape=(10, 20, 18), spacing=(2.5, 1.0, 1.0)):
    """One anatomy stored twice: identity direction, and mirrored in y and x with a diag(-1, -1, 1) direction
    whose origin is the far corner, so every voxel keeps its place in the scanner."""
    img, seg, g = blob_case(shape, spacing, 3)
    img[:, :4, :] = 300  # something on one side only: the canonical arrays must agree here too
    far = [(shape[2] - 1) * spacing[2], (shape[1] - 1) * spacing[1], 0.0]
    g2 = Geometry(list(shape), list(spacing), far, list(FLIPPED))
    return (img, seg, g), (img[:, ::-1, ::-1].copy(), seg[:, ::-1, ::-1].copy(), g2)


def test_reversed_axes_from_the_direction():
    g = Geometry([4, 5, 6], [1.0, 1.0, 1.0])
    assert g.reversed_axes_zyx() == []
    assert replace(g, direction=list(FLIPPED)).reversed_axes_zyx() == [1, 2]
    assert replace(g, direction=[1, 0, 0, 0, 1, 0, 0, 0, -1.0]).reversed_axes_zyx() == [0]
    # index X runs along physical -Y, index Y along +X (a 90-degree turn): only the array's X axis is reversed
    assert replace(g, direction=[0, 1.0, 0, -1.0, 0, 0, 0, 0, 1.0]).reversed_axes_zyx() == [2]
    # slightly oblique: the largest entry decides
    assert replace(g, direction=[0.95, 0.31, 0, -0.31, 0.95, 0, 0, 0, 1.0]).reversed_axes_zyx() == []


def test_canonical_preprocessing_puts_both_storages_the_same_way():
    cfg = tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8])
    for tf, flips in (((0, 1, 2), [1, 2]), ((2, 0, 1), [0, 2])):
        (i1, s1, g1), (i2, s2, g2) = _two_ways()
        keep = _plans(replace(cfg, canonical_orientation=True), tf)
        a, sa, pa = preprocess_case(i1[None].astype(np.float32), s1[None], g1, keep, keep.configurations["3d_fullres"], "a")
        b, sb, pb = preprocess_case(i2[None].astype(np.float32), s2[None], g2, keep, keep.configurations["3d_fullres"], "b")
        assert pa.flipped_axes == [] and pb.flipped_axes == flips
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_array_equal(sa, sb)
        as_stored = _plans(cfg, tf)
        c, _, pc = preprocess_case(i2[None].astype(np.float32), s2[None], g2, as_stored, cfg, "c")
        assert pc.flipped_axes == [] and np.abs(c - a).max() > 1  # nnU-Net's way: the array as stored


def test_prediction_goes_back_onto_the_stored_grid_exactly():
    """A one-hot of the preprocessed labels, exported, is the stored label map again (flipped back)."""
    cfg = replace(tiny_config("3d_fullres", [1.0, 2.5, 1.0], [8, 8, 8]), canonical_orientation=True)  # no resampling
    plans = _plans(cfg, (2, 0, 1))
    _, (img, seg, g) = _two_ways()
    pre, seg_pre, props = preprocess_case(img[None].astype(np.float32), seg[None], g, plans, cfg, "c")
    assert props.flipped_axes == [0, 2]
    probs = torch.from_numpy(np.stack([(seg_pre[0] == k) for k in range(3)]).astype(np.float32))
    mask, _ = segment(probs, props, plans, cfg)
    inside = tuple(slice(a, b) for a, b in props.bbox_zyx)
    np.testing.assert_array_equal(mask[inside], seg[inside])
    # a cascade's previous-stage mask lands on the image's canonical grid too
    onehot = onehot_previous_stage(seg, props, plans, cfg)
    np.testing.assert_array_equal(onehot[0] > 0, seg_pre[0] == 1)


def test_two_stage_core_box_follows_the_flip():
    cfg = replace(tiny_config("3d_roi_fullres", [2.5, 1.0, 1.0], [8, 8, 8]), canonical_orientation=True,
                  roi_margin_mm=0.0, roi_jitter_mm=4.0)
    plans = _plans(cfg)
    _, (img, seg, g) = _two_ways((12, 32, 30))
    seg = np.zeros_like(seg)
    seg[4:8, 3:9, 20:27] = 1  # an off-centre organ: a box mirrored by mistake would miss it
    _, seg_pre, props = preprocess_roi_case(img[None].astype(np.float32), seg[None], g, plans, cfg, "c")
    assert props.flipped_axes == [1, 2]
    core = tuple(slice(a, b) for a, b in props.roi_core_zyx)
    assert (seg_pre[0][core] > 0).sum() == (seg_pre[0] > 0).sum() > 0


def test_cpu_plans_mirror_every_axis_but_left_right():
    for tf, dim, want in (((0, 1, 2), 3, [0, 1]), ((0, 1, 2), 2, [0]), ((2, 0, 1), 3, [1, 2]), ((2, 0, 1), 2, [0, 1]),
                          ((1, 2, 0), 3, [0, 2])):
        cfg = tiny_config("c", [1.0] * dim, [8] * dim)
        keep_orientation(cfg, tf)
        assert cfg.canonical_orientation and cfg.mirror_axes == want and cfg.tta_axes == want
    assert tiny_config("g", [1.0] * 3, [8] * 3).tta_axes == [0, 1, 2]  # GPU plans: every axis


def test_augmentation_keeps_sides():
    nn_unet = default_augmentation_settings([8, 64, 64])  # pseudo-2D: half turns in-plane
    kept = default_augmentation_settings([8, 64, 64], [0, 1])
    assert nn_unet.mirror_axes == (0, 1, 2) and nn_unet.rotation_deg == 180.0
    assert kept.mirror_axes == (0, 1) and kept.rotation_deg == 30.0
    assert kept.initial_patch_size[1] < nn_unet.initial_patch_size[1]


def test_tta_flips_only_the_plans_axes():
    assert mirror_combinations(3, [0, 1]) == [(), (0,), (1,), (0, 1)]
    torch.manual_seed(0)
    net = nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 4, 4, 4)
    s = dict(patch_size=[4, 4, 4], mirror=True, amp="off")
    out = predict_sliding_window([net], x[0].numpy(), 2, SlidingWindowSettings(**s, mirror_axes=[0, 1]))
    every = predict_sliding_window([net], x[0].numpy(), 2, SlidingWindowSettings(**s))
    with torch.no_grad():
        logits = sum(torch.flip(net(torch.flip(x, [2 + a for a in c])), [2 + a for a in c]) for c in mirror_combinations(3, [0, 1])) / 4
    torch.testing.assert_close(out, torch.softmax(logits, 1)[0], atol=1e-6, rtol=1e-5)
    assert (out - every).abs().max() > 1e-4
