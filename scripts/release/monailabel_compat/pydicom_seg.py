"""The import name ``pydicom_seg`` for MONAI Label 0.8.5, served by ``pydicom-seg-rb`` (pydicom 3 / numpy 2).

MONAI Label 0.8.5 imports ``pydicom_seg`` at start-up (``monailabel/datastore/utils/convert.py``, DICOM-SEG export).
The only release of that package, pydicom-seg 0.4.1, requires numpy < 2 and imports ``pydicom._storage_sopclass_uids``,
which pydicom 3 removed (razorx89/pydicom-seg issue 60, Project-MONAI/MONAILabel issue 1841), so it cannot live
beside this bundle's numpy 2.4.6 / pydicom 3.0.2. ``pydicom-seg-rb`` 1.0.0 (PyPI) is the same code with only that
import fixed and the package renamed; this module makes the old name point at it. It is put on ``PYTHONPATH`` by
``scripts/release/monailabel_app.py`` (``serve`` / ``server_env``) and nowhere else. See docs/monailabel.md.
"""

import sys

try:
    import pydicom_seg_rb
except ImportError as err:  # pragma: no cover - the extra installs it
    raise ImportError(
        "MONAI Label needs pydicom_seg: install the bundle's extra, pip install -e '.[monailabel]' "
        "(it brings pydicom-seg-rb 1.0.0, which this shim serves under the old name)."
    ) from err

sys.modules[__name__] = pydicom_seg_rb
