import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from autoseg.evaluation.metrics import (compute_case_metrics, confusion_matrix, lesion_detection, mean_metrics,
                                        overlap_metrics, region_counts, region_key, surface, surface_metrics)


def test_overlap_metrics_from_counts_by_hand():
    m = overlap_metrics(tp=6, fp=2, fn=4)
    assert m["Dice"] == pytest.approx(12 / 18)
    assert m["IoU"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["VOE"] == pytest.approx(0.5)
    assert m["RVD"] == pytest.approx(-0.2)


def test_confusion_matrix_matches_brute_force_and_region_counts():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, size=(5, 6, 7))
    pred = rng.integers(0, 3, size=(5, 6, 7))
    cm = confusion_matrix(ref, pred, 3)
    for r in range(3):
        for p in range(3):
            assert cm[r, p] == np.count_nonzero((ref == r) & (pred == p))
    tp, fp, fn, tn = region_counts(cm, (1, 2))
    ref_m, pred_m = ref > 0, pred > 0
    assert (tp, fp, fn, tn) == (np.sum(ref_m & pred_m), np.sum(~ref_m & pred_m), np.sum(ref_m & ~pred_m), np.sum(~ref_m & ~pred_m))


def test_shifted_cubes_by_hand():
    ref = np.zeros((4, 6, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 1:3] = 1  # 8 voxels
    pred[1:3, 1:3, 2:4] = 1  # 8 voxels, 4 shared
    m = compute_case_metrics(ref, pred, (1.0, 1.0, 1.0), [1], tumor_label=None)["1"]
    assert m["Dice"] == pytest.approx(0.5)
    assert m["IoU"] == pytest.approx(1 / 3)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["VOE"] == pytest.approx(2 / 3) and m["RVD"] == pytest.approx(0.0)
    # cubes of 2 are all surface; each voxel's nearest surface voxel of the other cube is 0 or 1 voxel away
    assert m["HD95_mm"] == pytest.approx(1.0)
    assert m["ASSD_mm"] == pytest.approx(0.5)


def test_region_ignores_confusion_between_its_labels():
    ref = np.zeros((3, 4, 4), np.uint8)
    ref[1, :2] = 1
    ref[1, 2:] = 2
    pred = np.where(ref == 1, 2, np.where(ref == 2, 1, 0)).astype(np.uint8)  # labels swapped
    m = compute_case_metrics(ref, pred, (1, 1, 1), [1, 2, (1, 2)], tumor_label=None)
    assert m["1"]["Dice"] == 0.0 and m["2"]["Dice"] == 0.0
    assert m["1+2"]["Dice"] == 1.0 and m["1+2"]["HD95_mm"] == 0.0
    assert region_key((2, 1)) == "1+2"


def test_empty_conventions():
    ref = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros_like(ref)
    both_empty = compute_case_metrics(ref, pred, (1, 1, 1), [1])["1"]
    for k in ("Dice", "IoU", "precision", "recall", "RVD", "HD95_mm", "ASSD_mm"):
        assert math.isnan(both_empty[k]), k
    ref[1, 1, 1] = 1
    missed = compute_case_metrics(ref, pred, (1, 1, 1), [1])["1"]
    assert missed["Dice"] == 0.0 and missed["recall"] == 0.0 and math.isnan(missed["precision"])
    assert missed["HD95_mm"] == math.inf and missed["ASSD_mm"] == math.inf and missed["RVD"] == -1.0
    hallucinated = compute_case_metrics(pred, ref, (1, 1, 1), [1])["1"]
    assert hallucinated["Dice"] == 0.0 and math.isnan(hallucinated["recall"]) and hallucinated["RVD"] == math.inf


def test_planes_at_known_distance_with_anisotropic_spacing():
    spacing = (2.5, 0.7, 0.9)
    ref = np.zeros((8, 5, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[2] = 1
    pred[5] = 1
    m = surface_metrics(ref == 1, pred == 1, spacing)
    assert m["HD95_mm"] == pytest.approx(3 * 2.5)
    assert m["ASSD_mm"] == pytest.approx(3 * 2.5)
    ref[:], pred[:] = 0, 0
    ref[:, :, 1] = 1
    pred[:, :, 4] = 1
    m = surface_metrics(ref == 1, pred == 1, spacing)
    assert m["HD95_mm"] == pytest.approx(3 * 0.9)
    assert m["ASSD_mm"] == pytest.approx(3 * 0.9)


def test_hd95_ignores_single_outlier_but_assd_does_not():
    spacing = (2.0, 1.0, 1.0)
    ref = np.zeros((10, 10, 10), bool)
    ref[0] = True  # 100 voxels, all surface
    pred = ref.copy()
    pred[9, 5, 5] = True  # one voxel 9 slices away
    m = surface_metrics(ref, pred, spacing)
    # pred->ref: 100 zeros and one 18 mm -> 95th percentile 0; ref->pred: all 0
    assert m["HD95_mm"] == pytest.approx(0.0)
    assert m["ASSD_mm"] == pytest.approx(18.0 / 201)


def test_surface_metrics_match_brute_force_on_random_masks():
    rng = np.random.default_rng(1)
    spacing = (3.0, 0.8, 1.1)
    ref = np.zeros((10, 14, 12), bool)
    pred = np.zeros_like(ref)
    ref[2:7, 3:10, 2:9] = rng.random((5, 7, 7)) > 0.3
    pred[3:9, 4:12, 1:8] = rng.random((6, 8, 7)) > 0.3
    m = surface_metrics(ref, pred, spacing)
    pts_r = np.argwhere(surface(ref)) * spacing
    pts_p = np.argwhere(surface(pred)) * spacing
    d = cdist(pts_p, pts_r)
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    assert m["HD95_mm"] == pytest.approx(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    assert m["ASSD_mm"] == pytest.approx((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size))


def test_lesion_detection_counts():
    ref = np.zeros((6, 20, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:4, 2:4, 2:4] = True     # lesion A
    ref[2:4, 2:4, 6:8] = True     # lesion B
    ref[2:4, 15:18, 15:18] = True  # lesion C (missed)
    ref[0, 10, 10] = True         # lesion D: two voxels touching at a corner = one lesion (26-connected)
    ref[1, 11, 11] = True
    pred[2:4, 3, 3:7] = True      # one blob bridging A and B
    pred[0, 10, 10] = True        # hits D
    pred[5, 0:2, 18:20] = True    # false positive
    m = lesion_detection(ref, pred)
    assert m["lesion_n_ref"] == 4 and m["lesion_n_pred"] == 3
    assert m["lesion_detected"] == 3 and m["lesion_fn"] == 1
    assert m["lesion_tp_pred"] == 2 and m["lesion_fp"] == 1
    assert m["lesion_precision"] == pytest.approx(2 / 3) and m["lesion_recall"] == pytest.approx(3 / 4)
    assert m["lesion_F1"] == pytest.approx(2 * (2 / 3) * 0.75 / (2 / 3 + 0.75))
    none = lesion_detection(np.zeros_like(ref), np.zeros_like(ref))
    assert math.isnan(none["lesion_F1"]) and none["lesion_n_ref"] == 0
    only_fp = lesion_detection(np.zeros_like(ref), pred)
    assert only_fp["lesion_F1"] == 0.0 and only_fp["lesion_precision"] == 0.0


def test_lesion_metrics_attached_to_tumour_label_only():
    ref = np.zeros((4, 8, 8), np.uint8)
    ref[1:3, 1:7, 1:7] = 1
    ref[1, 2, 2] = 2
    m = compute_case_metrics(ref, ref, (1, 1, 1), [1, 2, (1, 2)], tumor_label=2)
    assert "lesion_F1" in m["2"] and "lesion_F1" not in m["1"] and "lesion_F1" not in m["1+2"]
    assert m["2"]["lesion_F1"] == 1.0


def test_mean_skips_nan():
    per_case = [{"1": {"Dice": 0.5}}, {"1": {"Dice": float("nan")}}, {"1": {"Dice": 1.0}}]
    assert mean_metrics(per_case)["1"]["Dice"] == pytest.approx(0.75)
    assert math.isnan(mean_metrics([{"1": {"Dice": float("nan")}}])["1"]["Dice"])
