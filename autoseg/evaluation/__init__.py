"""Evaluation: metrics, folder evaluation, postprocessing decision, clinical read-out, HTML report.

Modules: :mod:`metrics` (per-case numbers on arrays), :mod:`evaluate` (folders -> summary.json
and CSV), :mod:`postprocessing` (choosing the connected-component rules of :mod:`autoseg.model.postprocessing`), :mod:`clinical` (volumes,
lesions), :mod:`report` (self-contained HTML), :mod:`commands` (CLI glue).
"""

from autoseg.evaluation.clinical import clinical_summary, compare_summaries
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.metrics import compute_case_metrics
from autoseg.evaluation.postprocessing import determine_postprocessing
from autoseg.evaluation.report import ReportCase, write_report

__all__ = ["clinical_summary", "compare_summaries", "evaluate_folders", "compute_case_metrics",
           "determine_postprocessing", "ReportCase", "write_report"]
