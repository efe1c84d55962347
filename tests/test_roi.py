"""The two-stage organ -> lesion model: boxes in mm, exact paste-back, fallbacks, and a tiny run."""

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.datasets.layout import DatasetInfo, save_dataset_info
from autoseg.inference.export import segment
from autoseg.io.images import Geometry, read_image, write_image
from autoseg.io.json_io import load_json
from autoseg.planners.plans import Plans
from autoseg.preprocessing.preprocessor import preprocess_case
from autoseg.preprocessing.roi import crop_case, grow_box, mask_box, roi_box, stage1_region, training_box

from conftest import blob_case
from test_predict import FLIPPED, make_model, tiny_config

import torch


def test_margin_in_mm_on_anisotropic_spacing():
    # 10 mm at (5.0, 0.8, 1.5) mm -> 2, 13, 7 voxels; clipped at the image's edges
    assert grow_box([[4, 6], [20, 30], [0, 10]], [5.0, 0.8, 1.5], 10.0, [8, 40, 40]) == [[2, 8], [7, 40], [0, 17]]
    assert grow_box([[4, 6], [20, 30], [3, 10]], [5.0, 0.8, 1.5], 0.0, [8, 40, 40]) == [[4, 6], [20, 30], [3, 10]]


def test_components_union_box_and_empty():
    m = np.zeros((6, 30, 30), np.uint8)
    m[1:3, 2:6, 2:6] = 1            # organ 1: 32 voxels
    m[2:4, 20:25, 22:27] = 1        # organ 2 (a second kidney): 50 voxels
    m[5, 29, 0] = 1                 # a stray voxel: dropped
    m[5, 12:15, 12:15] = 1          # a false blob of 9 voxels (18 % of the largest, < 50 %): dropped
    box, n = roi_box(m, [1.0, 1.0, 1.0], 0.0)
    assert n == 2 and box == [[1, 4], [2, 25], [2, 27]]
    assert roi_box(np.zeros((4, 4, 4), np.uint8), [1, 1, 1], 10.0) == (None, 0)
    seg = np.zeros((1, 6, 30, 30), np.int8)
    stored, core = training_box(seg, [1, 1, 1], 5, 5)
    assert stored == core == [[0, 6], [0, 30], [0, 30]]


def test_cropped_geometry_lies_where_the_box_is_in_the_scanner():
    """A box of a flipped-direction, anisotropic image keeps every voxel's physical position."""
    g = Geometry([10, 20, 18], [2.5, 0.8, 1.1], [-12.5, 40.0, 7.25], list(FLIPPED))
    box = [[3, 9], [5, 17], [2, 11]]
    c = g.cropped(box)
    full = g.apply_to(sitk.Image([18, 20, 10], sitk.sitkUInt8))
    part = c.apply_to(sitk.Image([9, 12, 6], sitk.sitkUInt8))
    for idx in ([0, 0, 0], [8, 11, 5], [3, 7, 2]):  # (x, y, z) inside the box
        want = full.TransformIndexToPhysicalPoint([idx[0] + 2, idx[1] + 5, idx[2] + 3])
        assert np.allclose(part.TransformIndexToPhysicalPoint(idx), want)


def test_two_stage_mask_pastes_back_voxel_exact():
    """The same probabilities (a function of the voxel's place in the input) segmented through a box
    land exactly where the whole-image segmentation puts them; outside the box is background."""
    cfg = tiny_config("3d_fullres", [2.5, 0.8, 1.1], [8, 8, 8])
    plans = Plans("D", "p", 8, [0, 1, 2], [0, 1, 2], [2.5, 0.8, 1.1], [10, 20, 18], 1, {"background": 0, "liver": 1, "tumor": 2},
                  {"3d_fullres": cfg})
    img, seg, _ = blob_case((10, 20, 18), (2.5, 0.8, 1.1), 0)
    g = Geometry([10, 20, 18], [2.5, 0.8, 1.1], [-12.5, 40.0, 7.25], list(FLIPPED))
    data = img[None].astype(np.float32)

    def probs_for(pre_shape, offset):
        zz, yy, xx = np.meshgrid(*[np.arange(n) + o for n, o in zip(pre_shape, offset)], indexing="ij")
        p = np.stack([np.sin(zz + yy), np.cos(xx * 0.7), np.sin(yy * 0.3 + xx)]).astype(np.float32)
        return torch.from_numpy(np.exp(p) / np.exp(p).sum(0))

    pre, _, props = preprocess_case(data, None, g, plans, cfg, "c")
    whole, _ = segment(probs_for(pre.shape[1:], [a for a, _ in props.bbox_zyx]), props, plans, cfg)
    box = [[2, 8], [4, 15], [3, 16]]
    crop, _, cg = crop_case(data, None, g, box)
    pre_c, _, props_c = preprocess_case(np.ascontiguousarray(crop), None, cg, plans, cfg, "c")
    props_c.roi_box_zyx, props_c.roi_full_geometry = box, g
    offset = [b[0] + c[0] for b, c in zip(box, props_c.bbox_zyx)]
    pasted, full_probs = segment(probs_for(pre_c.shape[1:], offset), props_c, plans, cfg, keep_probabilities=True)
    inside = tuple(slice(a, b) for a, b in box)
    assert pasted.shape == tuple(g.shape_zyx)
    np.testing.assert_array_equal(pasted[inside], whole[inside])
    outside = np.ones(pasted.shape, bool)
    outside[inside] = False
    assert not pasted[outside].any() and np.all(full_probs[0][outside] == 1)


def _roi_dataset(folder, n=6):
    """Small blobs in larger images: the foreground fills a small part of each case."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img, seg, _ = blob_case((10, 20, 20), (2.5, 1.0, 1.0), i)
        big_img = np.full((16, 48, 48), -1000, np.int16) + rng.normal(0, 10, (16, 48, 48)).astype(np.int16)
        big_seg = np.zeros((16, 48, 48), np.uint8)
        z, y, x = rng.integers(0, 6), rng.integers(0, 28), rng.integers(0, 28)
        big_img[z:z + 10, y:y + 20, x:x + 20], big_seg[z:z + 10, y:y + 20, x:x + 20] = img, seg
        geom = Geometry([16, 48, 48], [2.5, 1.0, 1.0], [0.0, 0.0, 0.0], list(FLIPPED))
        write_image(big_img, geom, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_image(big_seg, geom, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    save_dataset_info(DatasetInfo(folder.name, {"0": "CT"}, {"background": 0, "liver": 1, "tumor": 2}, n), folder)


def test_tiny_two_stage_train_predict_evaluate(autoseg_env, tmp_path, capsys):
    raw = autoseg_env["raw"] / "Dataset004_Roi"
    _roi_dataset(raw)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "3d_roi_fullres", "--target", "cpu", "-np", "1"]) == 0
    plans = Plans.load(autoseg_env["pre"] / "Dataset004_Roi" / "plans.json")
    roi = plans.configurations["3d_roi_fullres"]
    assert roi.previous_stage == "3d_fullres" and roi.roi_margin_mm == 10.0
    props = load_json(next((autoseg_env["pre"] / "Dataset004_Roi" / roi.data_identifier).glob("*.json")))
    assert props["roi_box_zyx"] and props["roi_core_zyx"]
    fast = ["-f", "0", "--epochs", "1", "--iters-per-epoch", "2", "-np", "0"]
    assert main(["train", "-c", "3d_roi_fullres", *fast]) == 0      # stage 2 trains without stage 1
    assert "boxes from the ground truth" in capsys.readouterr().out
    assert main(["train", "-c", "3d_fullres", *fast]) == 0
    assert main(["train", "-c", "3d_roi_fullres", *fast, "--restart"]) == 0
    assert "boxes from 3d_fullres cross-validation" in capsys.readouterr().out
    src = raw / "imagesTr"
    out = tmp_path / "pred"
    assert main(["predict", "-c", "3d_roi_fullres", "-i", str(src), "-o", str(out), "--no-tta"]) == 0
    for f in sorted(src.glob("*.nii.gz"))[:2]:
        m = out / f.name.replace("_0000", "")
        assert read_image(m)[1].matches(read_image(f)[1]) is None  # the whole input's grid
    assert main(["evaluate", "-r", str(raw / "labelsTr"), "-p", str(out), "-o", str(tmp_path / "s.json")]) == 0


def test_empty_stage_one_falls_back_to_the_whole_image(autoseg_env, tmp_path, capsys):
    """Stage-1 masks with no foreground: a warning, and stage 2 predicts the whole image."""
    cfgs = {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8]),
            "3d_roi_fullres": tiny_config("3d_roi_fullres", [2.5, 1.0, 1.0], [8, 8, 8], previous="3d_fullres")}
    cfgs["3d_roi_fullres"].roi_margin_mm = 10.0
    make_model(autoseg_env["res"], cfgs)
    src, prev = tmp_path / "in", tmp_path / "prev"
    img, _, g = blob_case((8, 12, 12), (2.5, 1.0, 1.0), 0)
    write_image(img, g, src / "c_0000.nii.gz")
    write_image(np.zeros((8, 12, 12), np.uint8), g, prev / "c.nii.gz")
    assert main(["predict", "-c", "3d_roi_fullres", "-i", str(src), "-o", str(tmp_path / "o"), "--no-tta",
                 "--prev-stage-predictions", str(prev)]) == 0
    assert "found no foreground; stage 2 predicts the whole image" in capsys.readouterr().err
    assert read_image(tmp_path / "o" / "c.nii.gz")[1].matches(g) is None


def _region_in_full(region, shape):
    full = np.zeros(shape, bool)
    full[tuple(slice(a, b) for a, b in region.box)] = region.near
    return full


def test_stage1_region_grows_the_kept_components_by_the_margin_in_mm():
    m = np.zeros((11, 21, 21), np.uint8)
    m[5, 10, 10] = 1                 # the organ (one voxel)
    region = _region_in_full(stage1_region(m, [2.5, 1.0, 1.0], 5.0), m.shape)
    assert region[5 + 2, 10, 10] and not region[5 + 3, 10, 10]      # 5 mm: 2 slices of 2.5 mm, not 3
    assert region[5, 10 + 5, 10] and not region[5, 10 + 6, 10]      # 5 voxels of 1 mm in-plane
    assert region[5, 13, 14] and not region[5, 14, 14]               # a ball: sqrt(9 + 16) = 5 in, sqrt(32) out
    big = np.zeros((6, 30, 30), np.uint8)
    big[1:4, 2:8, 2:8] = 1           # the organ, 108 voxels
    big[3, 25:27, 25:27] = 1         # a false blob of 4 voxels: not kept, so no region around it
    found = stage1_region(big, [1.0, 1.0, 1.0], 2.0)
    region = _region_in_full(found, big.shape)
    assert region[1:4, 2:8, 2:8].all() and region[2, 9, 5] and not region[3, 25, 25]
    assert found.box == roi_box(big, [1.0, 1.0, 1.0], 2.0)[0]      # the box stage 2 predicts
    assert stage1_region(np.zeros((4, 4, 4), np.uint8), [1, 1, 1], 10.0) is None


def test_stage2_components_mostly_outside_stage1_are_dropped_whole():
    stage1 = np.zeros((8, 30, 30), np.uint8)
    stage1[1:7, 5:20, 5:20] = 1                          # stage 1's organ
    seg = stage1.copy()
    seg[3:5, 8:11, 8:11] = 2                             # a lesion inside the organ: kept
    seg[3:5, 17:23, 10:12] = 2                           # a lesion at the surface, 3 of 6 rows inside: kept whole
    seg[3:5, 20:24, 14:16] = 1                           # stage 2's liver beyond the organ, touching it: joins the organ component
    seg[2:4, 21:24, 2:5] = 2                             # a lesion beside the organ, within the margin only: dropped
    seg[4, 20, 2:4] = 1                                  # (its ring of liver outside the organ)
    region = stage1_region(stage1, [1.0, 1.0, 1.0], 5.0)
    out = region.restrict(seg)
    assert (out[3:5, 8:11, 8:11] == 2).all()
    assert (out[3:5, 17:23, 10:12] == 2).all()           # the surface lesion, including its 3 outside rows
    assert (out[2:4, 21:24, 2:5] == 0).all()             # the border lesion: background, not liver
    assert (out[3:5, 20:24, 14:16] == 1).all()           # liver hanging on to the organ's component stays
    assert out[0, 0, 0] == 0 and out.shape == seg.shape and out.dtype == seg.dtype
    far = seg.copy()
    far[6, 28, 28] = 2                                   # beyond the 5 mm margin: background
    assert region.restrict(far)[6, 28, 28] == 0
    lonely = np.zeros_like(seg)
    lonely[3:5, 22:25, 2:5] = 1                          # a liver blob in the margin, not in the organ
    assert not region.restrict(lonely).any()


def test_an_under_segmenting_stage1_never_removes_the_organ():
    stage1 = np.zeros((10, 30, 30), np.uint8)
    stage1[4:6, 10:14, 10:14] = 1                        # stage 1 found a small part of the organ
    seg = np.zeros_like(stage1)
    seg[1:9, 4:24, 4:24] = 1                             # stage 2's organ: 3200 voxels, 32 of them in stage 1's
    seg[4, 11, 11] = 2                                   # a lesion inside stage 1's part: kept
    seg[2, 5, 5] = 2                                     # one outside it: dropped (background)
    region = stage1_region(stage1, [1.0, 1.0, 1.0], 8.0)
    out, near = region.restrict(seg), _region_in_full(region, seg.shape)
    assert (out[near & (seg == 1)] == 1).all() and not out[~near].any()  # the organ stays within the margin
    assert out[4, 11, 11] == 2 and out[2, 5, 5] == 0
