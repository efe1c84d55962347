"""autoseg: a self-configuring, nnU-Net-style 3D segmentation pipeline.

Stages live in subpackages in the order data flows through them:
``io`` -> ``datasets`` -> ``fingerprint`` -> ``planners`` -> ``preprocessing``
-> ``networks``/``trainers`` -> ``inference`` -> ``evaluation``.
"""

__version__ = "0.1.0"
