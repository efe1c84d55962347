"""``autoseg synthetic`` and ``autoseg convert``: make a dataset in the raw layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg import paths
from autoseg.errors import AutosegError


def add_dataset_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset: name (Liver), DatasetNNN_Name, id (3) or path; optional when only one exists")


def configure_synthetic(p: argparse.ArgumentParser) -> None:
    add_dataset_argument(p)
    p.add_argument("-n", "--num-cases", type=int, default=20, help="training cases (default 20)")
    p.add_argument("--num-test", type=int, default=0, help="held-out test cases with labels (imagesTs/labelsTs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="small", choices=["tiny", "small", "demo", "medium", "large"], help="case size preset")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="exact case shape (overrides --size)")


def run_synthetic(a: argparse.Namespace) -> int:
    from autoseg.datasets.synthetic import generate_dataset
    name = paths.new_dataset_name(a.dataset or "Liver")
    out = paths.raw_dataset_dir(name)
    generate_dataset(out, a.num_cases, a.num_test, seed=a.seed, shape_zyx=tuple(a.shape) if a.shape else None,
                     size=a.size, name=name.split("_", 1)[1])
    print(f"wrote {a.num_cases} training + {a.num_test} test cases to {out}")
    return 0


def configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["msd", "lits", "png"], help="source layout")
    p.add_argument("source", help="source folder")
    p.add_argument("-d", "--dataset", default="Liver", help="name of the new dataset (default Liver)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="png only: voxel spacing in mm")


def run_convert(a: argparse.Namespace) -> int:
    from autoseg.datasets import converters as conv
    name = paths.new_dataset_name(a.dataset)
    out = paths.raw_dataset_dir(name)
    src = Path(a.source).expanduser()
    if a.kind == "png":
        if not a.spacing:
            raise AutosegError("convert png: --spacing X Y Z (mm) is required; PNG files carry no spacing")
        info = conv.convert_png(src, out, tuple(a.spacing))
    elif a.kind == "msd":
        info = conv.convert_msd(src, out)
    else:
        info = conv.convert_lits(src, out)
    print(f"wrote {info.numTraining} cases to {out}")
    return 0
