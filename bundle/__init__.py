"""MSA²Net / SA2-Net MONAI bundle: networks, losses, transforms, metrics, inference and reports.

Configs refer to this package as ``bundle.…``; run commands from the repository root (the bundle root), or put
the bundle root on ``PYTHONPATH``.
"""

# the bundle's version: provenance.json and DICOM SEG SoftwareVersions state it, pyproject.toml reads it, and a test
# holds it equal to configs/metadata.json's "version"
__version__ = "0.5.1"
