"""A self-contained HTML report: slice views with overlays, clinical summary, metrics.

Every picture is a PNG embedded as a base64 data URI, so the one ``.html`` file can be
mailed or archived. Per case three views are drawn: the axial slice where the largest
predicted lesion is widest, the axial slice through the liver centroid and a coronal slice
through the liver centroid. Each view has a CT panel, an overlay panel (prediction filled:
liver green, tumour red, semi-transparent; reference outlined: liver yellow, tumour cyan)
and, when given, an uncertainty heat-map panel.

Orientation: volumes are flipped/permuted to the scanner's axes (ITK/LPS) before slicing, so
axial slices show patient right on the image left and anterior at the top (radiological
convention), and coronal slices show superior at the top, whatever the file's direction
matrix. Oblique directions fall back to array order. Pixels are resized (nearest
neighbour, so label colours stay exact) to the physical aspect ratio: a 5 mm slice is drawn
five times as tall as a 1 mm pixel is wide.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from autoseg.errors import AutosegError
from autoseg.evaluation.clinical import ClinicalLabels, centroid_zyx, clinical_summary, compare_summaries
from autoseg.evaluation.metrics import compute_case_metrics, connected_components
from autoseg.io.images import Geometry, read_image
from autoseg.io.json_io import atomic_write_bytes

LIVER_WINDOW_HU = (-150.0, 250.0)  # width 400, level 50
FILL_COLOURS = {"organ": ((0, 255, 0), 0.35), "lesion": ((255, 0, 0), 0.55)}  # role: (RGB, opacity)
OTHER_FILL = ((0, 128, 255), 0.45)
CONTOUR_COLOURS = {"organ": (255, 255, 0), "lesion": (0, 255, 255)}
OTHER_CONTOUR = (255, 0, 255)
PANEL_LONG_SIDE_PX = 384
PANEL_MAX_SIDE_PX = 1024


@dataclass
class ReportCase:
    """One case of the report; ``metrics``/``clinical`` are computed when left as None."""

    case_id: str
    image_path: Path
    prediction_path: Path
    reference_path: Path | None = None
    uncertainty_path: Path | None = None
    metrics: dict | None = None
    clinical: dict | None = None


def to_display_orientation(arr_zyx: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, list[float]]:
    """Flip/permute a (Z, Y, X) array so its axes run along physical +z, +y, +x; returns it and its spacing.

    A direction matrix that is not a signed permutation (oblique) leaves the array as it is.
    """
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)  # d[physical axis, index axis (x, y, z)]
    phys_of_index = np.argmax(np.abs(d), axis=0)
    spacing = [float(s) for s in geometry.spacing_zyx]
    if sorted(phys_of_index.tolist()) != [0, 1, 2]:
        return arr_zyx, spacing
    order = [0, 0, 0]
    for index_axis in range(3):
        order[2 - phys_of_index[index_axis]] = 2 - index_axis
    out = np.transpose(arr_zyx, order)
    for axis in range(3):
        index_axis = 2 - order[axis]
        if d[phys_of_index[index_axis], index_axis] < 0:
            out = np.flip(out, axis=axis)
    return out, [spacing[o] for o in order]


def window_to_uint8(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Linear map of ``window`` (lo, hi) to 0..255; None uses the 0.5-99.5 percentiles."""
    lo, hi = window if window is not None else tuple(np.percentile(image, [0.5, 99.5]))
    scaled = (image.astype(np.float32) - lo) / max(hi - lo, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)


def overlay_rgb(grey_u8: np.ndarray, pred: np.ndarray, ref: np.ndarray | None, roles: ClinicalLabels = ClinicalLabels()) -> np.ndarray:
    """(H, W, 3) uint8: grey CT, prediction labels blended in, reference as 1-pixel outlines.

    The organ outline (``roles.organ``, liver by default) is drawn around all reference foreground
    (the organ including its lesions), every other label around its own voxels.
    """
    role = {roles.organ: "organ", roles.lesion: "lesion"}
    rgb = np.repeat(grey_u8[..., None], 3, axis=2).astype(np.float32)
    for label in [v for v in np.unique(pred) if v > 0]:
        colour, alpha = FILL_COLOURS.get(role.get(int(label), ""), OTHER_FILL)
        mask = pred == label
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float32)
    if ref is not None:
        for label in [v for v in np.unique(ref) if v > 0]:
            mask = ref > 0 if label == roles.organ else ref == label
            rgb[_contour(mask)] = CONTOUR_COLOURS.get(role.get(int(label), ""), OTHER_CONTOUR)
    return rgb.round().astype(np.uint8)


def heat_rgb(values: np.ndarray, top: float) -> np.ndarray:
    """(H, W, 3) uint8 'inferno' heat map of ``values`` scaled to 0..``top``."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import colormaps
    scaled = np.nan_to_num(values / top if top > 0 else np.zeros_like(values), nan=0.0)
    return (colormaps["inferno"](np.clip(scaled, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def display_shape(shape_rc: Sequence[int], spacing_rc: Sequence[float]) -> tuple[int, int]:
    """(rows, cols) on screen so one displayed pixel covers the same mm along rows and columns.

    At least one display pixel per voxel along the finer axis, long side about
    ``PANEL_LONG_SIDE_PX`` for small images, never more than ``PANEL_MAX_SIDE_PX``.
    """
    h_mm, w_mm = shape_rc[0] * spacing_rc[0], shape_rc[1] * spacing_rc[1]
    px_per_mm = max(PANEL_LONG_SIDE_PX / max(h_mm, w_mm), 1.0 / min(spacing_rc))
    px_per_mm = min(px_per_mm, PANEL_MAX_SIDE_PX / max(h_mm, w_mm))
    return max(1, round(h_mm * px_per_mm)), max(1, round(w_mm * px_per_mm))


def resize_nearest(plane: np.ndarray | None, shape_rc: tuple[int, int]) -> np.ndarray | None:
    """Nearest-neighbour resampling of a 2D array of any dtype (labels stay labels)."""
    if plane is None:
        return None
    rows = np.minimum(((np.arange(shape_rc[0]) + 0.5) * plane.shape[0] / shape_rc[0]).astype(int), plane.shape[0] - 1)
    cols = np.minimum(((np.arange(shape_rc[1]) + 0.5) * plane.shape[1] / shape_rc[1]).astype(int), plane.shape[1] - 1)
    return plane[np.ix_(rows, cols)]


def png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def choose_views(pred: np.ndarray, ref: np.ndarray | None, roles: ClinicalLabels) -> dict[str, tuple[int, int]]:
    """``{view: (axis, index)}`` in display orientation: axial_lesion (if a lesion), axial_liver, coronal."""
    views: dict[str, tuple[int, int]] = {}
    sources = [pred] + ([ref] if ref is not None else [])
    for seg in sources:
        labelled, n = connected_components(seg == roles.lesion)
        if n:
            largest = int(np.argmax(np.bincount(labelled.ravel())[1:])) + 1
            per_slice = np.count_nonzero(labelled == largest, axis=(1, 2))
            views["axial_lesion"] = (0, int(np.argmax(per_slice)))
            break
    centre = [s // 2 for s in pred.shape]
    for seg in sources:
        organ = (seg == roles.organ) | (seg == roles.lesion)
        if organ.any():
            centre = [int(round(c)) for c in centroid_zyx(organ)]
            break
    views["axial_liver"] = (0, centre[0])
    if pred.shape[0] > 1:
        views["coronal"] = (1, centre[1])
    return views


def _slice(arr: np.ndarray | None, axis: int, index: int) -> np.ndarray | None:
    if arr is None:
        return None
    plane = np.take(arr, index, axis=axis)
    return plane[::-1] if axis == 1 else plane  # coronal: superior (high z) at the top


def _read_matching(path: Path, reference: Geometry, what: str, dtype) -> np.ndarray:
    arr, geom = read_image(path, dtype=dtype)
    if (diff := reference.matches(geom)) is not None:
        raise AutosegError(f"{path}: {what} grid differs from its image ({diff}); it must overlay the image")
    return arr


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, str)):
        return html.escape(str(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return "nan" if np.isnan(value) else ("inf" if np.isinf(value) else f"{float(value):.2f}" if abs(value) >= 10 else f"{float(value):.3f}")


def _table(header: Sequence[str], rows: Sequence[Sequence], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _clinical_html(clinical: dict, comparison: dict | None) -> str:
    rows = [("liver volume (mL, incl. tumour)", clinical["liver_volume_ml"]), ("tumour volume (mL)", clinical["tumor_volume_ml"]),
            ("tumour burden (% of liver)", clinical["tumor_burden_percent"]), ("number of lesions", clinical["num_lesions"])]
    parts = [_table(["quantity", "prediction"], rows, "clinical")]
    if comparison is not None:
        parts.append(_table(["quantity", "prediction", "reference", "difference", "relative (%)"],
                            [(k, c["pred"], c["ref"], c["difference"], c["relative_difference_percent"]) for k, c in comparison.items()],
                            "comparison"))
    if clinical["lesions"]:
        parts.append(_table(["lesion", "volume (mL)", "largest axial diameter (mm)", "at slice z", "centroid (z, y, x) voxel"],
                            [(l["lesion"], l["volume_ml"], l["largest_axial_diameter_mm"], l["diameter_slice_z"], l["centroid_zyx_voxel"])
                             for l in clinical["lesions"]], "lesions"))
    return "".join(parts)


def _metrics_html(metrics: dict, names: dict[str, str]) -> str:
    cols = ["Dice", "IoU", "precision", "recall", "HD95_mm", "ASSD_mm"]
    rows = [[names.get(k, k)] + [m.get(c) for c in cols] for k, m in metrics.items()]
    html_out = _table(["structure"] + cols, rows, "metrics")
    lesion = next((m for m in metrics.values() if "lesion_F1" in m), None)
    if lesion is not None:
        lcols = ["lesion_n_ref", "lesion_n_pred", "lesion_detected", "lesion_fp", "lesion_precision", "lesion_recall", "lesion_F1"]
        html_out += _table([c.replace("lesion_", "") for c in lcols], [[lesion[c] for c in lcols]], "lesion-detection")
    return html_out


def render_case(case: ReportCase, roles: ClinicalLabels, window: tuple[float, float] | None) -> str:
    """The HTML section of one case (pictures embedded)."""
    image, geometry = read_image(case.image_path)
    pred = _read_matching(case.prediction_path, geometry, "prediction", np.int16)
    ref = _read_matching(case.reference_path, geometry, "reference", np.int16) if case.reference_path else None
    unc = _read_matching(case.uncertainty_path, geometry, "uncertainty", np.float32) if case.uncertainty_path else None
    clinical = case.clinical or clinical_summary(pred, geometry.spacing_zyx, roles.organ, roles.lesion, geometry)
    comparison = None
    metrics = case.metrics
    if ref is not None:
        comparison = compare_summaries(clinical, clinical_summary(ref, geometry.spacing_zyx, roles.organ, roles.lesion))
        if metrics is None:
            metrics = compute_case_metrics(ref, pred, geometry.spacing_zyx, [roles.organ, roles.lesion, (roles.organ, roles.lesion)],
                                           roles.lesion)

    image_d, spacing = to_display_orientation(image, geometry)
    pred_d = to_display_orientation(pred, geometry)[0]
    ref_d = to_display_orientation(ref, geometry)[0] if ref is not None else None
    unc_d = to_display_orientation(unc, geometry)[0] if unc is not None else None
    unc_top = float(np.nanmax(unc)) if unc is not None and np.isfinite(unc).any() else 0.0  # one scale per case
    cid = html.escape(case.case_id, quote=True)
    figures = []
    for view, (axis, index) in choose_views(pred_d, ref_d, roles).items():
        spacing_rc = [spacing[1], spacing[2]] if axis == 0 else [spacing[0], spacing[2]]
        plane = _slice(image_d, axis, index)
        size = display_shape(plane.shape, spacing_rc)
        grey = window_to_uint8(resize_nearest(plane, size), window)
        panels = {"ct": np.repeat(grey[..., None], 3, axis=2),
                  "overlay": overlay_rgb(grey, resize_nearest(_slice(pred_d, axis, index), size),
                                         resize_nearest(_slice(ref_d, axis, index), size), roles)}
        caption = f"{view.replace('_', ' ')} ({'z' if axis == 0 else 'y'} = {index})"
        if unc_d is not None:
            panels["uncertainty"] = heat_rgb(resize_nearest(_slice(unc_d, axis, index), size), unc_top)
            caption += f"; uncertainty 0 (black) – {unc_top:.3g} (yellow)"
        imgs = "".join(f'<img data-case="{cid}" data-view="{view}" data-panel="{name}" alt="{name}" '
                       f'src="{png_data_uri(rgb)}">' for name, rgb in panels.items())
        figures.append(f'<figure>{imgs}<figcaption>{html.escape(caption)}</figcaption></figure>')
    o, les = roles.organ, roles.lesion
    names = {str(o): roles.organ_name, str(les): roles.lesion_name, f"{min(o, les)}+{max(o, les)}": f"{roles.organ_name} + {roles.lesion_name}"}
    parts = [f'<section class="case" id="case-{cid}"><h2>{html.escape(case.case_id)}</h2>', "".join(figures),
             "<h3>Clinical summary</h3>", _clinical_html(clinical, comparison)]
    if metrics:
        parts += ["<h3>Metrics</h3>", _metrics_html(metrics, names)]
    return "".join(parts) + "</section>"


_STYLE = """body{font-family:sans-serif;margin:2em;background:#fafafa}figure{display:inline-block;margin:0 1em 1em 0}
img{margin-right:4px;image-rendering:pixelated}table{border-collapse:collapse;margin:0.5em 0}
td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}th{background:#eee}.legend span{padding:0 6px;margin-right:8px}"""
def _legend(roles: ClinicalLabels) -> str:
    organ, lesion = html.escape(roles.organ_name), html.escape(roles.lesion_name)
    return (f'<p class="legend">Prediction: <span style="background:#00ff00">{organ}</span><span style="background:#ff0000">{lesion}</span>'
            f' Reference outline: <span style="background:#ffff00">{organ}</span><span style="background:#00ffff">{lesion}</span>'
            ' CT window W 400 / L 50 HU. Axial: patient right on the left; coronal: head at the top.</p>')


def write_report(cases: list[ReportCase], out_html: Path | str, training_curves_png: Path | str | None = None,
                 roles: ClinicalLabels = ClinicalLabels(),
                 window: tuple[float, float] | None = LIVER_WINDOW_HU) -> Path:
    """Render ``cases`` into one self-contained HTML file (written atomically); returns its path.

    ``roles``: the organ's and lesion's label values and names (liver 1 / tumour 2 by default).
    ``window`` is the display window in image units (default liver window -150..250 HU);
    None scales each slice between its 0.5 and 99.5 percentiles (non-CT images).
    """
    out_html = Path(out_html)
    body = ["<h1>autoseg segmentation report</h1>", _legend(roles)]
    if training_curves_png is not None:
        curves = Path(training_curves_png)
        if not curves.is_file():
            raise AutosegError(f"{curves}: training curves image not found; pass an existing PNG or leave --curves out")
        uri = "data:image/png;base64," + base64.b64encode(curves.read_bytes()).decode("ascii")
        body.append(f'<h2>Training curves</h2><img data-panel="training_curves" alt="training curves" src="{uri}">')
    body += [render_case(case, roles, window) for case in tqdm(cases, desc="report", unit="case")]
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>autoseg report</title><style>{_STYLE}</style>'
            f'</head><body>{"".join(body)}</body></html>')
    atomic_write_bytes(out_html, page.encode("utf-8"))
    return out_html
