"""The ``autoseg`` command line: one subcommand per pipeline step.

Every subcommand's work lives in its stage's package; this module only parses arguments
and turns :class:`~autoseg.errors.AutosegError` into one line on stderr and exit code 1.
Heavy modules are imported when a command runs, so ``autoseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from autoseg import __version__
from autoseg.errors import AutosegError

Command = tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _add_dataset(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("-d", "--dataset", required=required, default=None,
                   help="dataset: name (Liver), DatasetNNN_Name, id (3) or path; optional when only one exists")


# --- synthetic -------------------------------------------------------------------------
def _cfg_synthetic(p):
    _add_dataset(p)
    p.add_argument("-n", "--num-cases", type=int, default=20, help="training cases (default 20)")
    p.add_argument("--num-test", type=int, default=0, help="held-out test cases with labels (imagesTs/labelsTs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="small", choices=["tiny", "small", "demo", "medium", "large"], help="case size preset")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="exact case shape (overrides --size)")


def _run_synthetic(a):
    from autoseg import paths
    from autoseg.datasets.synthetic import generate_dataset
    name = paths.new_dataset_name(a.dataset or "Liver")
    out = paths.raw_dataset_dir(name)
    generate_dataset(out, a.num_cases, a.num_test, seed=a.seed, shape_zyx=tuple(a.shape) if a.shape else None,
                     size=a.size, name=name.split("_", 1)[1])
    print(f"wrote {a.num_cases} training + {a.num_test} test cases to {out}")
    return 0


# --- convert ---------------------------------------------------------------------------
def _cfg_convert(p):
    p.add_argument("kind", choices=["msd", "lits", "png"], help="source layout")
    p.add_argument("source", help="source folder")
    p.add_argument("-d", "--dataset", default="Liver", help="name of the new dataset (default Liver)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="png only: voxel spacing in mm")


def _run_convert(a):
    from pathlib import Path

    from autoseg import paths
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


# --- plan_and_preprocess ---------------------------------------------------------------
def _cfg_plan(p):
    _add_dataset(p)
    p.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres", "3d_lowres"],
                   help="configurations to preprocess (default: 2d 3d_fullres 3d_lowres)")
    p.add_argument("--gpu-memory", type=float, default=8.0, help="GPU memory budget in GB that sizes patch and batch (default 8)")
    p.add_argument("--target", choices=["gpu", "cpu"], default="gpu",
                   help="gpu: nnU-Net's plans sized to --gpu-memory (default); cpu: sized to ~1 s per training iteration on 2 cores")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--verify", action="store_true", help="only check the dataset's integrity; write nothing")
    p.add_argument("--clean", action="store_true", help="redo cases already preprocessed")
    p.add_argument("--normalization", default=None,
                   help="override the intensity normalisation: ct, zscore or window:LO,HI (e.g. window:-200,200)")


def _run_plan(a):
    from autoseg.preprocessing.run import plan_and_preprocess
    plan_and_preprocess(a.dataset, a.configurations, a.gpu_memory, a.num_processes, a.verify, a.clean, a.normalization,
                        target=a.target)
    return 0


def _lazy(module: str, configure: str, run: str) -> tuple[Callable, Callable]:
    """Configure/run functions of a stage module, imported only when used."""
    import importlib

    def cfg(p):
        getattr(importlib.import_module(module), configure)(p)

    def go(a):
        return getattr(importlib.import_module(module), run)(a)
    return cfg, go


COMMANDS: list[Command] = [
    ("synthetic", "write a synthetic abdominal-CT liver dataset", "autoseg synthetic -d Liver -n 20 --seed 0", _cfg_synthetic, _run_synthetic),
    ("convert", "convert an MSD / LiTS / PNG-slice dataset to the raw layout", "autoseg convert msd ~/Task03_Liver -d Liver", _cfg_convert, _run_convert),
    ("plan_and_preprocess", "check the dataset, fingerprint it, plan configurations, preprocess",
     "autoseg plan_and_preprocess -d Liver -c 3d_fullres", _cfg_plan, _run_plan),
    ("train", "train fold(s) of 5-fold cross-validation", "autoseg train -d Liver -c 3d_fullres -f 0",
     *_lazy("autoseg.trainers.run", "configure", "run")),
    ("predict", "segment images with the trained folds (ensemble, mirroring TTA, exact geometry)",
     "autoseg predict -d Liver -i images/ -o masks/", *_lazy("autoseg.inference.commands", "configure_predict", "run_predict")),
    ("ensemble", "combine saved probabilities of several predictions", "autoseg ensemble -i out_3d out_2d -o out_ens",
     *_lazy("autoseg.inference.commands", "configure_ensemble", "run_ensemble")),
    ("export_model", "pack a trained model into one zip file", "autoseg export_model -d Liver -o liver_model.zip",
     *_lazy("autoseg.inference.commands", "configure_export_model", "run_export_model")),
    ("evaluate", "compare predicted masks with reference masks (Dice, IoU, HD95, lesions ...)",
     "autoseg evaluate -r labelsTs/ -p masks/ -o summary.json", *_lazy("autoseg.evaluation.commands", "configure_evaluate", "run_evaluate")),
    ("find_best_configuration", "rank trained configurations by cross-validation and choose postprocessing",
     "autoseg find_best_configuration -d Liver", *_lazy("autoseg.evaluation.model_selection", "configure", "run")),
    ("report", "write a self-contained HTML report with overlays and clinical numbers",
     "autoseg report -i images/ -p masks/ -o report.html", *_lazy("autoseg.evaluation.commands", "configure_report", "run_report")),
    ("demo", "run the whole pipeline on built-in synthetic data (5-9 min on 2 CPU cores)", "autoseg demo",
     *_lazy("autoseg.demo", "configure", "run")),
]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its options (imports stay lazy)."""
    parser = argparse.ArgumentParser(prog="autoseg", description="Self-configuring 3D medical image segmentation.",
                                     epilog="Run 'autoseg <command> --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    chosen = next((t for t in (argv or []) if not t.startswith("-")), None)
    for name, help_, example, cfg, run in COMMANDS:
        p = sub.add_parser(name, help=f"{help_}  (e.g. {example})", description=f"{help_}.\n\nexample:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen or argv is None:
            cfg(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except AutosegError as e:
        for line in str(e).splitlines():
            print(f"autoseg {args.command}: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"autoseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
