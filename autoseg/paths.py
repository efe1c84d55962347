"""The one place where autoseg's folders are resolved.

Three roots, each from an environment variable with a working default:

* ``AUTOSEG_RAW`` (default ``~/autoseg_data/raw``): datasets in nnU-Net v2's raw layout.
* ``AUTOSEG_PREPROCESSED`` (default ``~/autoseg_data/preprocessed``): fingerprint, plans,
  splits and preprocessed cases.
* ``AUTOSEG_RESULTS`` (default ``~/autoseg_data/results``): trained folds, model selection.

A dataset is referred to by ``Liver``, ``Dataset003_Liver``, ``3`` or a path to its raw
folder; :func:`resolve_dataset` turns any of these into the canonical folder name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from autoseg.errors import AutosegError

_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")


def _root(var: str, sub: str) -> Path:
    value = os.environ.get(var)
    if value:
        return Path(value).expanduser()
    return Path.home() / "autoseg_data" / sub


def raw_root() -> Path:
    return _root("AUTOSEG_RAW", "raw")


def preprocessed_root() -> Path:
    return _root("AUTOSEG_PREPROCESSED", "preprocessed")


def results_root() -> Path:
    return _root("AUTOSEG_RESULTS", "results")


def list_datasets(root: Path | None = None) -> list[str]:
    """Canonical dataset folder names (``DatasetNNN_Name``) found under ``root`` (raw by default)."""
    root = raw_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _DATASET_RE.match(p.name))


def dataset_id(name: str) -> int:
    m = _DATASET_RE.match(name)
    if not m:
        raise AutosegError(f"'{name}' is not a dataset folder name; expected DatasetNNN_Name")
    return int(m.group(1))


def new_dataset_name(name: str) -> str:
    """Canonical folder name for a new dataset called ``name``.

    ``Dataset005_X`` is kept as is; a plain ``X`` reuses an existing ``DatasetNNN_X`` or takes
    the lowest free id.
    """
    if _DATASET_RE.match(name):
        return name
    existing = list_datasets() + list_datasets(preprocessed_root())
    for d in existing:
        if _DATASET_RE.match(d).group(2) == name:  # type: ignore[union-attr]
            return d
    used = {dataset_id(d) for d in existing}
    free = next(i for i in range(1, 1000) if i not in used)
    return f"Dataset{free:03d}_{name}"


def resolve_dataset(ref: str | None, search_preprocessed: bool = True) -> str:
    """Turn ``-d`` (name, id, canonical name, path or None) into a canonical dataset name.

    ``None`` is allowed when exactly one dataset exists.
    """
    candidates = sorted(set(list_datasets()) | (set(list_datasets(preprocessed_root())) if search_preprocessed else set()))
    if ref is None:
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise AutosegError(f"no dataset found under {raw_root()}; create one with 'autoseg synthetic' or 'autoseg convert', or set AUTOSEG_RAW")
        raise AutosegError(f"several datasets exist ({', '.join(candidates)}); choose one with -d")
    p = Path(ref).expanduser()
    if os.sep in ref or (p.is_dir() and _DATASET_RE.match(p.resolve().name) and p.resolve().parent == raw_root().resolve()):
        if _DATASET_RE.match(p.resolve().name):
            return p.resolve().name
        raise AutosegError(f"{ref}: a dataset path must end in a DatasetNNN_Name folder")
    if _DATASET_RE.match(ref):
        if ref in candidates:
            return ref
        raise AutosegError(f"dataset {ref} not found under {raw_root()} or {preprocessed_root()}")
    for d in candidates:
        m = _DATASET_RE.match(d)
        assert m
        if (ref.isdigit() and int(ref) == int(m.group(1))) or ref == m.group(2):
            return d
    raise AutosegError(f"dataset '{ref}' not found under {raw_root()} (known: {', '.join(candidates) or 'none'})")


def raw_dataset_dir(name: str) -> Path:
    return raw_root() / name


def preprocessed_dataset_dir(name: str) -> Path:
    return preprocessed_root() / name


def results_dataset_dir(name: str) -> Path:
    return results_root() / name


def fold_dir(name: str, configuration: str, fold: int | str) -> Path:
    """``<results>/<dataset>/<configuration>/fold_<f>`` (``fold_all`` for training on every case)."""
    return results_dataset_dir(name) / configuration / f"fold_{fold}"


# --- the results folder's layout (written by train / find_best_configuration, read by predict) ---
BEST_CONFIGURATION_FILE = "best_configuration.json"
POSTPROCESSING_FILE = "postprocessing.json"
ENSEMBLE_PREFIX = "ensemble__"


def validation_dir(name: str, configuration: str, fold: int | str) -> Path:
    """A fold's cross-validation predictions: ``<fold_dir>/validation``."""
    return fold_dir(name, configuration, fold) / "validation"


def crossval_dir(name: str) -> Path:
    """Where model selection merges folds and scores candidates: ``<results>/<dataset>/crossval``."""
    return results_dataset_dir(name) / "crossval"


def ensemble_name(configurations: list[str] | tuple[str, ...]) -> str:
    """``["2d", "3d_fullres"]`` -> ``ensemble__2d__3d_fullres`` (a candidate's folder name in ``crossval``)."""
    return ENSEMBLE_PREFIX + "__".join(configurations)


def ensemble_members(candidate: str) -> list[str]:
    """Inverse of :func:`ensemble_name`; a plain configuration name gives ``[name]``."""
    return candidate[len(ENSEMBLE_PREFIX):].split("__") if candidate.startswith(ENSEMBLE_PREFIX) else [candidate]
