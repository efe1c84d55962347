import argparse
import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from autoseg.evaluation.commands import configure_report, run_report
from autoseg.evaluation.report import ReportCase, to_display_orientation, write_report
from autoseg.io.images import Geometry, write_image

SHAPE = (8, 32, 32)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            a = dict(attrs)
            assert a["src"].startswith("data:image/png;base64,")
            a["rgb"] = np.asarray(Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1]))).convert("RGB"))
            self.imgs.append(a)


def _panels(html_path):
    parser = _Images()
    parser.feed(html_path.read_text())
    return parser.imgs


def _green(rgb):
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (g > r + 40) & (g > b + 40)


def _red(rgb):
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > g + 40) & (r > b + 40)


def _yellow(rgb):
    return (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)


def _write_case(folder, name, seg, direction=None, spacing=(5.0, 1.0, 1.0), with_ref=True):
    geom = Geometry(list(SHAPE), list(spacing), direction=direction or [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    ct = np.full(SHAPE, 50.0, np.float32)   # mid-window grey
    write_image(ct, geom, folder / "images" / f"{name}_0000.nii.gz")
    write_image(seg.astype(np.uint8), geom, folder / "preds" / f"{name}.nii.gz")
    if with_ref:
        write_image(seg.astype(np.uint8), geom, folder / "refs" / f"{name}.nii.gz")
    unc = np.zeros(SHAPE, np.float32)
    unc[2:6, 8:24, 8:16] = 0.8
    write_image(unc, geom, folder / "unc" / f"{name}_uncertainty.nii.gz")


def _liver_seg():
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:6, 8:24, 0:16] = 1                # liver occupies the low-x half (columns 0..16 of 32)
    seg[3:5, 12:18, 4:10] = 2
    return seg


def _cli(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    configure_report(parser)
    args = parser.parse_args(["-i", str(tmp_path / "images"), "-p", str(tmp_path / "preds"),
                              "-o", str(tmp_path / "report.html"), *extra])
    assert run_report(args) == 0
    return _panels(tmp_path / "report.html")


def test_overlay_colours_where_the_mask_is(tmp_path):
    _write_case(tmp_path, "case1", _liver_seg())
    curves = tmp_path / "curves.png"
    Image.new("RGB", (20, 10), (1, 2, 3)).save(curves)
    imgs = _cli(tmp_path, "-r", str(tmp_path / "refs"), "-u", str(tmp_path / "unc"), "--curves", str(curves))
    by = {(i.get("data-view"), i["data-panel"]): i["rgb"] for i in imgs}
    assert by[(None, "training_curves")][0, 0].tolist() == [1, 2, 3]
    assert {v for v, _ in by if v} == {"axial_lesion", "axial_liver", "coronal"}
    liver = by[("axial_liver", "overlay")]
    green = _green(liver)
    assert green.any() and not _green(by[("axial_liver", "ct")]).any()
    cols = np.flatnonzero(green.any(axis=0)) / liver.shape[1]
    assert cols.min() >= 0.0 and cols.max() < 0.5                  # liver in columns 0..16 of 32
    rows = np.flatnonzero(green.any(axis=1)) / liver.shape[0]
    assert rows.min() >= 8 / 32 - 0.01 and rows.max() < 24 / 32
    assert _red(by[("axial_lesion", "overlay")]).any()
    assert _yellow(liver).any()                                     # reference outline
    heat = by[("axial_liver", "uncertainty")]
    assert heat[heat.shape[0] // 2, int(heat.shape[1] * 0.4)].sum() > heat[0, 0].sum()
    text = (tmp_path / "report.html").read_text()
    assert "Clinical summary" in text and "Metrics" in text and "1.000" in text


def test_empty_prediction_has_no_overlay_colours(tmp_path):
    _write_case(tmp_path, "empty", np.zeros(SHAPE, np.uint8), with_ref=False)
    imgs = _cli(tmp_path)
    assert imgs and not any(i.get("data-view") == "axial_lesion" for i in imgs)
    for img in imgs:
        assert not _green(img["rgb"]).any() and not _red(img["rgb"]).any()


def test_coronal_aspect_and_flipped_direction(tmp_path):
    flipped_x = [-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    _write_case(tmp_path, "flip", _liver_seg(), direction=flipped_x, with_ref=False)
    out = write_report([ReportCase("flip", tmp_path / "images" / "flip_0000.nii.gz", tmp_path / "preds" / "flip.nii.gz")],
                       tmp_path / "r.html")
    by = {(i["data-view"], i["data-panel"]): i["rgb"] for i in _panels(out)}
    coronal = by[("coronal", "overlay")]
    # 8 slices of 5 mm tall, 32 columns of 1 mm wide
    assert coronal.shape[0] / coronal.shape[1] == pytest.approx(40 / 32, rel=0.02)
    # index x 0..16 lies at physical -x: displayed on the high-x (right) half after reorientation
    axial = by[("axial_liver", "overlay")]
    cols = np.flatnonzero(_green(axial).any(axis=0)) / axial.shape[1]
    assert cols.min() >= 0.5


def test_to_display_orientation_permutes_and_flips():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    # index x runs along physical -y, index y along physical +x
    geom = Geometry([2, 3, 4], [3.0, 2.0, 1.0], direction=[0, 1.0, 0, -1.0, 0, 0, 0, 0, 1.0])
    out, spacing = to_display_orientation(arr, geom)
    assert out.shape == (2, 4, 3) and spacing == [3.0, 1.0, 2.0]
    assert np.array_equal(out, np.flip(np.transpose(arr, (0, 2, 1)), axis=1))
