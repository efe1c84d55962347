"""What the label values of a dataset mean: one definition every stage reads.

nnU-Net v2's ``dataset.json`` rules, parsed once into :class:`LabelDefinition`:

* **Any values.** ``{"background": 0, "liver": 1, "tumor": 5}``: label files hold the user's
  values; preprocessing stores *classes* 0..K-1 (the values in ascending order, ``class_values``),
  the network predicts classes and export writes the user's values back.
* **Ignore.** A label named ``"ignore"`` must have the highest value; its voxels are stored as
  class ``K`` (``ignore_class``), which no loss, sampler, statistic or metric counts and which the
  network has no output for.
* **Regions.** List values (``"liver": [1, 2], "tumor": 2``) with ``regions_class_order`` (one
  value per region, in the order the regions are listed): the network has one sigmoid output per
  region (background is not one); a mask is made by painting ``regions_class_order[i]`` where
  region ``i``'s probability is > 0.5, later regions over earlier ones.

Example::

    d = LabelDefinition.from_json({"background": 0, "liver": [1, 2], "tumor": 2, "ignore": 3}, [1, 2])
    d.class_values == [0, 1, 2]; d.ignore_class == 3; d.region_classes == [[1, 2], [2]]; d.num_outputs == 2
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autoseg.errors import AutosegError

IGNORE_NAME = "ignore"
MAX_LABEL = 127  # class maps are stored as int8 after preprocessing; label files may use values up to this


@dataclass(frozen=True)
class LabelDefinition:
    """The labels of ``dataset.json`` (name -> value or list of values) and ``regions_class_order``.

    Build it with :meth:`from_json` (checks the rules); everything else is derived.
    """

    labels: dict[str, int | list[int]]
    regions_class_order: list[int] | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_json(cls, labels: object, regions_class_order: object = None, where: str = "dataset.json") -> "LabelDefinition":
        """Check nnU-Net's rules and return the definition; one-line AutosegError naming ``where``."""
        if not isinstance(labels, dict) or not labels:
            raise AutosegError(f"{where}: 'labels' must map names to values, e.g. {{\"background\": 0, \"liver\": 1}}")
        parsed: dict[str, int | list[int]] = {}
        for name, value in labels.items():
            parsed[str(name)] = _parse_value(value, str(name), where)
        order = None
        if regions_class_order is not None:
            if not isinstance(regions_class_order, (list, tuple)):
                raise AutosegError(f"{where}: 'regions_class_order' must be a list of label values, e.g. [1, 2]")
            order = [_as_int(v, "regions_class_order", where) for v in regions_class_order]
        if not any(isinstance(v, list) for v in parsed.values()):
            order = None  # nnU-Net: without list values the dataset is label-based and the order is unused
        d = cls(parsed, order)
        d._check(where)
        return d

    def _check(self, where: str) -> None:
        singles = [v for n, v in self.labels.items() if isinstance(v, int)]
        if 0 not in singles:
            raise AutosegError(f"{where}: 'labels' must declare background as 0")
        out_of_range = sorted({v for v in self.all_values if not 0 <= v <= MAX_LABEL})
        if out_of_range:
            raise AutosegError(f"{where}: label value(s) {out_of_range} outside 0..{MAX_LABEL}; renumber the labels (files and dataset.json)")
        if IGNORE_NAME in self.labels:
            ig = self.labels[IGNORE_NAME]
            others = [x for n, v in self.labels.items() if n != IGNORE_NAME for x in (v if isinstance(v, list) else [v])]
            if not isinstance(ig, int) or (others and ig <= max(others)):
                raise AutosegError(f"{where}: the 'ignore' label must have the highest value, one integer above every other "
                                   f"label's (it is {ig}, others go up to {max(others)}); renumber it in dataset.json and the label files")
        self._check_unique(where)
        if self.has_regions:
            self._check_regions(where)

    def _check_unique(self, where: str) -> None:
        if self.has_regions:
            return
        values = [v for v in self.labels.values()]
        dup = sorted({v for v in values if values.count(v) > 1})  # type: ignore[arg-type]
        if dup:
            raise AutosegError(f"{where}: label value(s) {dup} declared under several names; give each label its own value")

    def _check_regions(self, where: str) -> None:
        n = len(self.region_values)
        if self.regions_class_order is None:
            raise AutosegError(f"{where}: region-based labels (list values) need 'regions_class_order' "
                               f"(one label value per region, e.g. {list(range(1, n + 1))}); add it")
        if len(self.regions_class_order) != n:
            raise AutosegError(f"{where}: 'regions_class_order' has {len(self.regions_class_order)} entries but there are {n} regions "
                               f"(labels other than background and ignore); give one label value per region")
        bad = [v for v in self.regions_class_order if v not in self.class_values or v == 0]
        if bad:
            raise AutosegError(f"{where}: 'regions_class_order' value(s) {bad} are not foreground label values "
                               f"({self.class_values[1:]}); list the value to paint for each region")
        for name, vals in zip(self.region_names, self.region_values):
            if 0 in vals:
                raise AutosegError(f"{where}: region '{name}' contains background (0); regions are made of foreground values")

    # -- what the values are ------------------------------------------------------------
    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, list) for v in self.labels.values())

    @property
    def ignore_value(self) -> int | None:
        v = self.labels.get(IGNORE_NAME)
        return v if isinstance(v, int) else None

    @property
    def all_values(self) -> list[int]:
        """Every value named anywhere (ignore included), sorted: what a label file may contain."""
        out: set[int] = set()
        for v in self.labels.values():
            out.update(v if isinstance(v, list) else [v])
        return sorted(out)

    @property
    def class_values(self) -> list[int]:
        """Class k's label value: the values other than ignore, ascending (background first)."""
        return [v for v in self.all_values if v != self.ignore_value]

    @property
    def num_classes(self) -> int:
        """Classes stored after preprocessing, background included, ignore excluded."""
        return len(self.class_values)

    @property
    def foreground_values(self) -> list[int]:
        return self.class_values[1:]

    @property
    def ignore_class(self) -> int | None:
        """The stored class of ignored voxels (``num_classes``), or None."""
        return None if self.ignore_value is None else self.num_classes

    # -- regions ---------------------------------------------------------------------------
    @property
    def region_names(self) -> list[str]:
        """Names of the regions (labels except background and ignore), in dataset.json order."""
        return [n for n, v in self.labels.items() if n != IGNORE_NAME and v != 0]

    @property
    def region_values(self) -> list[list[int]]:
        """The label values of each region, e.g. ``[[1, 2], [2]]``."""
        return [list(v) if isinstance(v, list) else [v] for n, v in self.labels.items() if n != IGNORE_NAME and v != 0]

    @property
    def region_classes(self) -> list[list[int]]:
        """Each region's stored classes (indices into ``class_values``)."""
        index = {v: k for k, v in enumerate(self.class_values)}
        return [[index[v] for v in vals] for vals in self.region_values]

    # -- the network -------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        """Network output channels: one per class (softmax), or one per region (sigmoid)."""
        return len(self.region_values) if self.has_regions else self.num_classes

    @property
    def output_names(self) -> list[str]:
        """What each output channel is: class names (background first) or region names."""
        if self.has_regions:
            return self.region_names
        by_value = {v: n for n, v in self.labels.items() if isinstance(v, int)}
        return [by_value[v] for v in self.class_values]

    @property
    def value_names(self) -> dict[int, str]:
        """``{value: name}`` of the foreground values that have a name of their own (one integer)."""
        return {int(v): n for n, v in self.labels.items() if isinstance(v, int) and v != 0 and n != IGNORE_NAME}

    @property
    def mask_names(self) -> dict[int, str]:
        """``{value: name}`` of the foreground values a predicted mask holds. Label-based: the labels.
        Regions: each ``regions_class_order`` value, named by its own label if it has one, else by
        the region it is painted for (``{"liver": [1, 2], "tumor": 2}``, order [1, 2] -> 1 liver, 2 tumor)."""
        if not self.has_regions:
            return self.value_names
        assert self.regions_class_order is not None
        own = self.value_names
        return {v: own.get(v, name) for v, name in zip(self.regions_class_order, self.region_names)}

    @property
    def mask_labels(self) -> dict[str, int]:
        """``{name: value}`` of a predicted mask's values, background 0 first (DICOM SEG segments)."""
        return {"background": 0, **{n: v for v, n in sorted(self.mask_names.items())}}

    # -- conversions -------------------------------------------------------------------------
    def to_classes(self, seg: np.ndarray) -> np.ndarray:
        """Label values -> int8 classes (ignore -> ``ignore_class``). Values not declared raise ValueError.

        Values that are already their classes (0..K-1, ignore K: most datasets) come back as they are;
        otherwise the map is applied one slice (last two axes) at a time, so no int64 copy of a CT's
        label map is made.
        """
        lut = self._lut()
        seg = np.asarray(seg)
        if seg.size and (int(seg.min()) < 0 or int(seg.max()) >= len(lut)):
            raise ValueError(f"label values outside 0..{len(lut) - 1}")
        if np.array_equal(lut, np.arange(len(lut))):
            return seg.astype(np.int8, copy=False)
        out = np.empty(seg.shape, np.int8)
        rows = seg.reshape(-1, seg.shape[-2] * seg.shape[-1]) if seg.ndim >= 2 else seg.reshape(1, -1)
        out_rows = out.reshape(rows.shape)
        for i in range(rows.shape[0]):
            out_rows[i] = lut[rows[i]]
        if out.size and int(out.min()) < 0:
            raise ValueError(f"undeclared label value(s) {sorted(set(np.unique(seg[out < 0]).tolist()))}")
        return out

    def _lut(self) -> np.ndarray:
        if "lut" not in self._cache:
            lut = np.full(max(self.all_values) + 1, -1, np.int8)
            for k, v in enumerate(self.class_values):
                lut[v] = k
            if self.ignore_value is not None:
                lut[self.ignore_value] = self.num_classes
            self._cache["lut"] = lut
        return self._cache["lut"]

    def to_values(self, classes: np.ndarray) -> np.ndarray:
        """Classes (label-based) -> uint8 label values."""
        return np.asarray(self.class_values, dtype=np.uint8)[np.asarray(classes, dtype=np.intp)]

    def paint_regions(self, region_masks) -> np.ndarray:
        """nnU-Net's rule: start from 0, paint ``regions_class_order[i]`` where ``region_masks[i]`` is
        True, in order (later regions overwrite earlier ones). ``region_masks``: (R, *spatial) bool
        or a sequence of them. Returns uint8 label values."""
        assert self.regions_class_order is not None
        out = None
        for value, mask in zip(self.regions_class_order, region_masks):
            if out is None:
                out = np.zeros(np.shape(mask), np.uint8)
            out[np.asarray(mask)] = value
        assert out is not None
        return out

    def to_json(self) -> dict:
        out: dict = {"labels": self.labels}
        if self.regions_class_order is not None:
            out["regions_class_order"] = self.regions_class_order
        return out


def _as_int(value: object, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise AutosegError(f"{where}: '{name}' has value {value!r}; label values must be integers")
    return int(value)


def _parse_value(value: object, name: str, where: str) -> int | list[int]:
    if isinstance(value, (list, tuple)):
        if not value:
            raise AutosegError(f"{where}: region '{name}' lists no values; list its label values, e.g. [1, 2]")
        vals = sorted({_as_int(v, name, where) for v in value})
        return vals[0] if len(vals) == 1 else vals  # nnU-Net: a one-value list is that value
    return _as_int(value, name, where)


def label_definition(labels: dict, regions_class_order: list[int] | None = None) -> LabelDefinition:
    """The definition of labels already checked (plans, probability files): no messages needed."""
    return LabelDefinition.from_json(labels, regions_class_order, "labels")
