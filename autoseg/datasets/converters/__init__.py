"""Converters from public dataset layouts into the raw nnU-Net v2 layout (see ``layout``).

Each writes ``imagesTr``/``labelsTr`` (and ``imagesTs`` where the source has test images) and
``dataset.json`` into ``out_dir``, the ``DatasetNNN_Name`` folder, and returns its DatasetInfo.
"""

from autoseg.datasets.converters.lits import convert_lits
from autoseg.datasets.converters.msd import convert_msd
from autoseg.datasets.converters.png import convert_png

__all__ = ["convert_msd", "convert_lits", "convert_png"]
