"""MSA²Net / SA2-Net MONAI bundle: networks, losses, transforms, metrics, inference and reports.

Configs refer to this package as ``bundle.…``; run commands from the repository root (the bundle root), or put
the bundle root on ``PYTHONPATH``.
"""

__version__ = "0.4.1"
