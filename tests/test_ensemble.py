"""``autoseg ensemble``: weighted sums of saved probabilities, argmax, geometry from the probability files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.inference.ensemble import ensemble_folders
from autoseg.model.postprocessing import PostprocessingRules, save_rules
from autoseg.model.probabilities import ProbabilityInfo, combine, load_probabilities, write_probabilities
from autoseg.inference.sliding_window import normalized_weights
from autoseg.io.images import Geometry, read_image

LABELS = {"background": 0, "liver": 1, "tumor": 2}
GEOM = Geometry([1, 1, 3], [2.5, 0.7, 0.7], [10.0, -5.0, 3.0], [-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0])


def _probs(*columns) -> np.ndarray:
    """(3, 1, 1, n) from per-voxel probability triples."""
    return np.array(columns, dtype=np.float16).T.reshape(3, 1, 1, -1)


def test_weights_are_normalised():
    assert normalized_weights([3, 1], 2) == [0.75, 0.25]
    assert normalized_weights(None, 4) == [0.25] * 4
    with pytest.raises(AutosegError):
        normalized_weights([1, 2], 3)
    with pytest.raises(AutosegError):
        normalized_weights([-1, 2], 2)


def test_combine_hand_computed():
    a = _probs((0.6, 0.3, 0.1), (0.2, 0.5, 0.3), (0.1, 0.1, 0.8))
    b = _probs((0.1, 0.8, 0.1), (0.6, 0.1, 0.3), (0.5, 0.1, 0.4))
    labels, best = combine([a, b], [0.5, 0.5], [0, 1, 2])
    # means: (0.35, 0.55, 0.1) -> 1; (0.4, 0.3, 0.3) -> 0; (0.3, 0.1, 0.6) -> 2
    assert labels.ravel().tolist() == [1, 0, 2]
    np.testing.assert_allclose(best.ravel(), [0.55, 0.4, 0.6], atol=1e-3)
    labels, _ = combine([a, b], [0.8, 0.2], [0, 1, 2])
    # 0.8a + 0.2b: (0.5, 0.4, 0.1) -> 0; (0.28, 0.42, 0.3) -> 1; (0.18, 0.1, 0.72) -> 2
    assert labels.ravel().tolist() == [0, 1, 2]


def _write(folder, case, p, name=None):
    write_probabilities(p, ProbabilityInfo(case, dict(LABELS), GEOM, name or f"{case}.nii.gz"), folder)


def test_ensemble_folders_writes_masks_with_recorded_geometry(tmp_path, capsys):
    d1, d2, out = tmp_path / "fullres", tmp_path / "2d", tmp_path / "out"
    a = _probs((0.6, 0.3, 0.1), (0.2, 0.5, 0.3), (0.1, 0.1, 0.8))
    b = _probs((0.1, 0.8, 0.1), (0.6, 0.1, 0.3), (0.5, 0.1, 0.4))
    _write(d1, "c1", a, "c1.nrrd")
    _write(d2, "c1", b, "c1.nrrd")
    _write(d1, "only_here", a)
    assert main(["ensemble", "-i", str(d1), str(d2), "-o", str(out), "--weights", "4", "1", "--save-probabilities"]) == 1
    assert "only_here" in capsys.readouterr().err
    seg, geom = read_image(out / "c1.nrrd", np.uint8)
    assert seg.ravel().tolist() == [0, 1, 2]
    img = sitk.ReadImage(str(out / "c1.nrrd"))
    assert img.GetDirection() == tuple(GEOM.direction) and img.GetOrigin() == tuple(GEOM.origin_xyz)
    mixed, info = load_probabilities(out, "c1")
    np.testing.assert_allclose(mixed.astype(np.float32), 0.8 * a.astype(np.float32) + 0.2 * b.astype(np.float32), atol=2e-3)


def test_ensemble_refuses_mismatched_inputs_and_applies_postprocessing(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    p = _probs((0.1, 0.8, 0.1), (0.9, 0.05, 0.05), (0.1, 0.8, 0.1))
    _write(d1, "c", p)
    write_probabilities(p, ProbabilityInfo("c", {"background": 0, "organ": 1, "x": 2}, GEOM, "c.nii.gz"), d2)
    s = ensemble_folders([d1, d2], tmp_path / "out")
    assert "labels" in s.failed["c"] and not s.written
    _write(d2, "c", p)
    rules = PostprocessingRules(keep_largest_foreground=True)
    save_rules(rules, tmp_path / "pp.json")
    assert main(["ensemble", "-i", str(d1), str(d2), "-o", str(tmp_path / "pp"), "--postprocessing", str(tmp_path / "pp.json")]) == 0
    seg, _ = read_image(tmp_path / "pp" / "c.nii.gz", np.uint8)
    assert seg.ravel().tolist() == [1, 0, 0]  # two liver blobs; the second (tie, higher id) is removed
    with pytest.raises(AutosegError, match="at least two"):
        ensemble_folders([d1], tmp_path / "x")
