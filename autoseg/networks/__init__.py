"""Segmentation networks built from the plan's :class:`~autoseg.planners.plans.NetworkTopology`.

See :mod:`autoseg.networks.builder` for the shared input/output contract.
"""

from autoseg.networks.builder import NETWORKS, build_network, count_parameters

__all__ = ["NETWORKS", "build_network", "count_parameters"]
