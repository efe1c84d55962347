"""The plans artefact (``plans.json``): typed here, indented JSON on disk.

Axis order: every per-axis list in a :class:`ConfigurationPlan` is in the *transposed*
order (``Plans.transpose_forward`` applied to (Z, Y, X)), i.e. the order the network sees.
For 2D configurations the lists have two entries (the in-plane axes) and slices are taken
along the first transposed axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from autoseg.datasets.labels import LabelDefinition, label_definition
from autoseg.io.json_io import load_dataclass, save_json


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """``round(shape * spacing / new_spacing)`` per axis (nnU-Net's rule), at least 1: the shape a
    case has after resampling to the plan's spacing (planned here, done in preprocessing)."""
    return [max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing)]


@dataclass
class NetworkTopology:
    """A U-Net's shape, derived by the planner (nnU-Net's ``get_pool_and_conv_props``).

    ``strides[0]`` is all ones (the first stage does not downsample); ``strides[i]`` is the
    downsampling into stage ``i``. ``features_per_stage[i] = min(32 * 2**i, max_features)``.
    """

    n_stages: int
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    n_conv_per_stage_encoder: list[int]
    n_conv_per_stage_decoder: list[int]

    @property
    def dim(self) -> int:
        return len(self.kernel_sizes[0])

    @property
    def pool_per_axis(self) -> list[int]:
        return [sum(1 for s in self.strides if s[a] == 2) for a in range(self.dim)]


@dataclass
class ChannelNormalization:
    """How one input channel is normalised.

    ``scheme``: ``ct`` (clip to the dataset's foreground 0.5/99.5 percentiles, then z-score
    with the foreground mean/std), ``zscore`` (per image, mean/std of the whole image),
    ``window`` (clip to ``[lower, upper]`` and scale to [0, 1], e.g. -200..200 HU as in the
    V-Net report) or ``rescale`` (grey levels 0..255 to [0, 1]).
    """

    scheme: str
    mean: float = 0.0
    std: float = 1.0
    lower: float = 0.0
    upper: float = 0.0


@dataclass
class ResamplingSettings:
    """Image order in-plane / along the out-of-plane axis when anisotropic, and the threshold."""

    order_data: int = 3
    order_data_z: int = 0
    order_seg: int = 1
    order_seg_z: int = 0
    anisotropy_threshold: float = 3.0


@dataclass
class ConfigurationPlan:
    name: str
    data_identifier: str
    spacing_mm: list[float]
    patch_size: list[int]
    median_shape_vox: list[int]
    batch_size: int
    batch_dice: bool
    topology: NetworkTopology
    normalization: list[ChannelNormalization]
    resampling: ResamplingSettings = field(default_factory=ResamplingSettings)
    estimated_vram_gb: float = 0.0
    previous_stage: str | None = None  # cascade / two-stage: the configuration whose predictions feed this one
    next_stage: str | None = None
    expected_s_per_iter_cpu: float | None = None  # cost model (planners/cost_model.py): one training iteration, 2-core CPU
    train_gflop_per_iter: float | None = None  # convolution GFLOPs of one iteration, forward + backward, whole batch
    roi_margin_mm: float | None = None  # two-stage: stage 2 sees only the stage-1 foreground box + this margin
    roi_jitter_mm: float | None = None  # two-stage training: boxes shifted/resized by up to this much per side
    canonical_orientation: bool = False  # preprocessing flips axes stored against their physical direction (CPU plans)
    mirror_axes: list[int] | None = None  # patch axes mirrored in training and TTA; None: all (nnU-Net)

    @property
    def dim(self) -> int:
        return len(self.patch_size)

    @property
    def tta_axes(self) -> list[int]:
        """The patch axes that augmentation and mirroring TTA flip (``mirror_axes``, else every axis)."""
        return list(range(self.dim)) if self.mirror_axes is None else [int(a) for a in self.mirror_axes]

    @property
    def is_roi(self) -> bool:
        """Stage 2 of the two-stage model: predicts inside the previous stage's foreground box."""
        return self.roi_margin_mm is not None

    @property
    def is_cascade(self) -> bool:
        """nnU-Net's cascade: the previous stage's mask is an extra (one-hot) input over the whole image."""
        return self.previous_stage is not None and not self.is_roi


@dataclass
class Plans:
    dataset_name: str
    plans_name: str
    gpu_memory_gb: float
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing_mm: list[float]
    original_median_shape_vox: list[int]
    num_input_channels: int
    labels: dict[str, int | list[int]]  # dataset.json's; what they mean: label_definition
    configurations: dict[str, ConfigurationPlan]
    memory_model: str = ""
    target: str = "gpu"  # gpu: nnU-Net's memory-sized plans; cpu: sized to a training iteration of ~1 s (cpu_planner.py)
    cost_model: str = ""
    regions_class_order: list[int] | None = None  # region-based datasets (see autoseg.datasets.labels)

    def transposed(self, values_zyx: "list | tuple") -> list:
        """Per-axis (Z, Y, X) values in the network's axis order: ``values_zyx[transpose_forward[i]]``."""
        return [values_zyx[i] for i in self.transpose_forward]

    def save(self, path: Path | str) -> None:
        save_json(self, path)

    @classmethod
    def load(cls, path: Path | str) -> "Plans":
        return load_dataclass(cls, path)

    @property
    def label_definition(self) -> LabelDefinition:
        """Label values <-> stored classes, regions, ignore (:mod:`autoseg.datasets.labels`)."""
        return label_definition(self.labels, self.regions_class_order)

    @property
    def num_classes(self) -> int:
        """The network's output channels: classes (background included) or regions."""
        return self.label_definition.num_outputs
