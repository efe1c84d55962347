"""The ``autoseg`` command line: one subcommand per pipeline step.

Every subcommand's work lives in its stage's package; this module only parses arguments
and turns :class:`~autoseg.errors.AutosegError` into one line on stderr and exit code 1.
Heavy modules are imported when a command runs, so ``autoseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Callable

from autoseg import __version__
from autoseg.errors import AutosegError

Command = tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _lazy(module: str, configure: str, run: str) -> tuple[Callable, Callable]:
    """Configure/run functions of a stage module, imported only when used."""
    import importlib

    def cfg(p):
        getattr(importlib.import_module(module), configure)(p)

    def go(a):
        return getattr(importlib.import_module(module), run)(a)
    return cfg, go


COMMANDS: list[Command] = [
    ("synthetic", "write a synthetic abdominal-CT liver dataset", "autoseg synthetic -d Liver -n 20 --seed 0",
     *_lazy("autoseg.datasets.commands", "configure_synthetic", "run_synthetic")),
    ("convert", "convert an MSD / LiTS / PNG-slice dataset to the raw layout", "autoseg convert msd ~/Task03_Liver -d Liver",
     *_lazy("autoseg.datasets.commands", "configure_convert", "run_convert")),
    ("plan_and_preprocess", "check the dataset, fingerprint it, plan configurations, preprocess",
     "autoseg plan_and_preprocess -d Liver -c 3d_fullres", *_lazy("autoseg.preprocessing.commands", "configure_plan_and_preprocess",
                                                                 "run_plan_and_preprocess")),
    ("train", "train fold(s) of 5-fold cross-validation, then validate each fold", "autoseg train -d Liver -c 3d_fullres -f 0",
     *_lazy("autoseg.crossval", "configure_train", "run_train")),
    ("predict", "segment images with the trained folds (ensemble, mirroring TTA, exact geometry)",
     "autoseg predict -d Liver -i images/ -o masks/", *_lazy("autoseg.inference.commands", "configure_predict", "run_predict")),
    ("ensemble", "combine saved probabilities of several predictions", "autoseg ensemble -i out_3d out_2d -o out_ens",
     *_lazy("autoseg.inference.commands", "configure_ensemble", "run_ensemble")),
    ("export_model", "pack a trained model into one zip file", "autoseg export_model -d Liver -o liver_model.zip",
     *_lazy("autoseg.inference.commands", "configure_export_model", "run_export_model")),
    ("evaluate", "compare predicted masks with reference masks (Dice, IoU, HD95, lesions ...)",
     "autoseg evaluate -r labelsTs/ -p masks/ -o summary.json", *_lazy("autoseg.evaluation.commands", "configure_evaluate", "run_evaluate")),
    ("find_best_configuration", "rank trained configurations by cross-validation and choose postprocessing",
     "autoseg find_best_configuration -d Liver",
     *_lazy("autoseg.evaluation.commands", "configure_find_best_configuration", "run_find_best_configuration")),
    ("report", "write a self-contained HTML report with overlays and clinical numbers",
     "autoseg report -i images/ -p masks/ -o report.html", *_lazy("autoseg.evaluation.commands", "configure_report", "run_report")),
    ("demo", "run the whole pipeline on built-in synthetic data (trains within an 8-minute budget)", "autoseg demo",
     *_lazy("autoseg.demo", "configure_demo", "run_demo")),
]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its options (imports stay lazy)."""
    parser = argparse.ArgumentParser(prog="autoseg", description="Self-configuring 3D medical image segmentation.",
                                     epilog="Run 'autoseg <command> --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show debug messages and tracebacks (also of the one-line errors)")
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
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # not "NumExpr defaulting to N threads." on every run
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except AutosegError as e:
        if args.verbose:
            traceback.print_exc()
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
