"""A PACS over DICOMweb (QIDO-RS, WADO-RS, STOW-RS) as a source of studies and the destination of DICOM SEG objects.

``run inference --dicomweb_url http://pacs/dicom-web --study_uid … [--series_uid …] --output_type dicom_seg``:

* :func:`fetch_study` retrieves the study's series (dicomweb-client) into ``<output_dir>/dicomweb/<study>/<series>/``,
  where the local series rules (:mod:`bundle.io.dicom_series`: localizers, derived, non-CT skipped) apply unchanged;
  SEG/SR/RTSTRUCT and other non-image series are not downloaded at all (QIDO's Modality says what they are);
* :class:`StoreDicomSegd` stores each SEG the run writes with STOW-RS and checks the STOW response
  (``FailedSOPSequence``, not only the HTTP status: Orthanc's DICOMweb plugin before 1.10 answers 200 when it
  rejected an instance). A SEG whose SOPInstanceUID the PACS already holds is not stored again (the SEG's UIDs are
  derived from the source series, the weights and the mask, so a rerun makes the same object) unless
  ``overwrite``.

Every failure (server unreachable, unknown study, rejected store) is one :class:`~bundle.errors.InputError` line.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Hashable, List, Mapping, Optional

from monai.transforms import MapTransform

from bundle.errors import InputError
from bundle.io.atomic import atomic_path

logger = logging.getLogger(__name__)

IMAGE_MODALITIES = ("CT",)  # series of other modalities are not worth downloading: the series rules skip them
_MODALITY, _SERIES_UID, _SERIES_NUMBER = "00080060", "0020000E", "00200011"
_AS_STORED = (("application/dicom", "*"),)


def client(url: str, timeout: float = 60.0):
    """A ``DICOMwebClient`` for ``url``, with a one-line error when the package is missing."""
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError as err:  # pragma: no cover - a core dependency
        raise InputError(f"--dicomweb_url needs dicomweb-client ({err}): pip install dicomweb-client.") from None
    return DICOMwebClient(url=str(url).rstrip("/"), timeout=timeout)


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _call(what: str, url: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with network and HTTP failures turned into one line naming the server."""
    import requests

    try:
        return fn(*args, **kwargs)
    except requests.exceptions.ConnectionError:
        raise InputError(f"the DICOMweb server {url} cannot be reached ({what}): check --dicomweb_url and that the "
                         "PACS is running.") from None  # fmt: skip
    except requests.exceptions.HTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise InputError(f"the DICOMweb server {url} answered HTTP {status} to {what}: {str(err)[:160]}.") from None


def fetch_study(url: str, study_uid: str, dest: str, series_uid: Optional[str] = None) -> str:
    """Retrieves the CT series of one study (or one series of it) into ``dest/<study_uid>/<series_uid>/`` and returns
    the study folder, for the local series rules to choose from.

    Series already complete there (same instance count) are not downloaded again.

    Raises:
        InputError: the server cannot be reached or answers an error; the study is unknown; ``series_uid`` is not
            in it; the study holds no CT series.
    """
    if not study_uid:
        raise InputError("--dicomweb_url needs --study_uid (the StudyInstanceUID to segment).")
    web = client(url)
    series = _call("a QIDO series search", url, web.search_for_series, study_instance_uid=study_uid)
    if not series:
        raise InputError(f"study {study_uid} is not on {url} (QIDO found no series): check --study_uid.")
    found = [(_value(s, _SERIES_UID), _value(s, _MODALITY), _value(s, _SERIES_NUMBER)) for s in series]
    if series_uid and series_uid not in [uid for uid, _, _ in found]:
        listed = ", ".join(f"{uid} ({modality} {number})" for uid, modality, number in found)
        raise InputError(f"--series_uid {series_uid} is not in study {study_uid} on {url} (series: {listed}).")
    wanted = [(uid, m) for uid, m, _ in found if (uid == series_uid if series_uid else m in IMAGE_MODALITIES)]
    for uid, modality, number in found:
        if (uid, modality) not in wanted:
            logger.info(f"DICOMweb series {number} ({modality}, {uid}) of study {study_uid}: not retrieved")
    if not wanted:
        raise InputError(
            f"study {study_uid} on {url} holds no CT series (modalities: {sorted({m for _, m, _ in found})})."
        )
    root = os.path.join(str(dest), study_uid)
    for uid, _ in wanted:
        folder = os.path.join(root, uid)
        instances = _call("a QIDO instance search", url, web.search_for_instances, study_uid, uid)
        if os.path.isdir(folder) and len(os.listdir(folder)) == len(instances):
            continue  # retrieved by an earlier run
        # as stored (transfer-syntax *): a PACS need not transcode (Debian's Orthanc cannot decode JPEG 2000)
        datasets = _call("a WADO series retrieve", url, web.retrieve_series, study_uid, uid, media_types=_AS_STORED)
        os.makedirs(folder, exist_ok=True)
        for i, ds in enumerate(datasets):
            with atomic_path(os.path.join(folder, f"{i:05d}.dcm")) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        logger.info(f"DICOMweb: retrieved series {uid} of study {study_uid} ({len(datasets)} instances) into {folder}")
    return root


def study_input(
    input: Any = None,
    url: Optional[str] = None,
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    dest: str = "dicomweb",
    output_type: str = "nifti",
) -> Any:
    """What inference segments: ``input`` as given, or, with a DICOMweb ``url``, the study retrieved from it.

    Raises:
        InputError: both ``input`` and ``url``; ``url`` without a SEG output type; as :func:`fetch_study`.
    """
    if not url:
        return input
    if input:
        raise InputError("give either --input or --dicomweb_url (with --study_uid), not both.")
    if output_type not in ("dicom_seg", "both"):
        raise InputError(
            "--dicomweb_url stores DICOM SEG objects back on the PACS: add --output_type dicom_seg (or both)."
        )
    return fetch_study(url, study_uid, dest, series_uid)


def stored_sop_uids(url: str, study_uid: str, series_uid: Optional[str] = None) -> List[str]:
    """SOPInstanceUIDs the PACS holds in a study (or one of its series)."""
    web = client(url)
    found = _call("a QIDO instance search", url, web.search_for_instances, study_uid, series_uid)
    return [_value(item, "00080018") for item in found]


class StoreDicomSegd(MapTransform):
    """Stores the SEG written for ``key`` (``<key>_seg_path``) on a DICOMweb server with STOW-RS.

    Args:
        keys: the prediction key whose SEG path :class:`~bundle.io.dicom_seg.SaveDicomSegd` left.
        url: the DICOMweb root (e.g. ``http://127.0.0.1:8042/dicom-web``); ``None`` disables the transform.
        overwrite: store a SEG the server already holds (same SOPInstanceUID) again.
    """

    def __init__(self, keys: str = "pred", url: Optional[str] = None, overwrite: bool = False) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.url, self.overwrite = url, overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        if not self.url:
            return d
        for key in self.keys:
            path = d.get(f"{key}_seg_path")
            if path:
                d[f"{key}_stored_uid"] = store_seg(self.url, path, self.overwrite)
        return d


def store_seg(url: str, path: str, overwrite: bool = False) -> str:
    """Stores one SEG file, checks the STOW-RS response, and returns its SOPInstanceUID.

    Raises:
        InputError: the server cannot be reached, answers an error, or lists the instance as failed.
    """
    import pydicom

    ds = pydicom.dcmread(path)
    uid, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
    referenced = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    if not overwrite and uid in stored_sop_uids(url, study, str(ds.SeriesInstanceUID)):
        logger.info(f"DICOMweb: SEG {uid} (of series {referenced}) is already on {url}: not stored again")
        return uid
    try:
        response = _call("a STOW store", url, client(url).store_instances, [ds])
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "?")
            raise InputError(f"{url} rejected the DICOM SEG {path} (SOPInstanceUID {uid}, failure reason {reason}).")
    except InputError:
        os.remove(path)  # a SEG kept locally only when stored: a rerun makes and stores it again
        raise
    logger.info(f"DICOMweb: stored SEG {uid} (referenced series {referenced}) on {url}")
    return uid
