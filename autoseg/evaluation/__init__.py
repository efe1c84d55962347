"""Evaluation: metrics, folder evaluation, postprocessing decision, clinical read-out, HTML report.

Modules: :mod:`metrics` (per-case numbers on arrays), :mod:`evaluate` (folders -> summary.json
and CSV), :mod:`postprocessing` (connected-component rules), :mod:`clinical` (volumes,
lesions), :mod:`report` (self-contained HTML), :mod:`commands` (CLI glue).
"""

from autoseg.evaluation.clinical import clinical_summary, compare_summaries
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.metrics import compute_case_metrics
from autoseg.evaluation.postprocessing import (PostprocessingRules, apply_postprocessing, determine_postprocessing,
                                               load_rules, save_rules)
from autoseg.evaluation.report import ReportCase, write_report

__all__ = ["clinical_summary", "compare_summaries", "evaluate_folders", "compute_case_metrics", "PostprocessingRules",
           "apply_postprocessing", "determine_postprocessing", "load_rules", "save_rules", "ReportCase", "write_report"]
