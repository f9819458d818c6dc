"""A local Orthanc PACS to try the clinical path against (the tests, the PACS load benchmark, docs/clinical.md §8).

Debian packages ``orthanc`` and ``orthanc-dicomweb`` (the PACS the MONAI Label docs use). :class:`LocalOrthanc` starts
it on 127.0.0.1 with a temporary storage folder, DICOMweb on, the DICOM port off, no authentication and remote
access off, waits for ``/system``, and stops it on exit whatever happens.

Example::

    with LocalOrthanc("/tmp/pacs") as pacs:
        pacs.upload(glob.glob("study/**/*.dcm", recursive=True))
        # python -m monai.bundle run inference … --dicomweb_url {pacs.dicomweb} --study_uid …
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from typing import Iterable, Optional

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
GDCM_PLUGIN = "/usr/share/orthanc/plugins/libOrthancGdcm.so"  # JPEG 2000 decoding and transcoding


def orthanc_missing(transcode: bool = False) -> Optional[str]:
    """Why a local Orthanc cannot start here (``None`` when it can); ``transcode``: with the GDCM plugin."""
    if shutil.which("Orthanc") is None or not os.path.exists(PLUGIN):
        return "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
    if transcode and not os.path.exists(GDCM_PLUGIN):
        return "Orthanc's GDCM plugin (JPEG 2000 transcoding) is not installed (apt-get install orthanc-gdcm)"
    return None


class LocalOrthanc:
    """Context manager: a throwaway Orthanc on a free loopback port.

    Args:
        root: folder for its configuration, storage and log.
        start_timeout: seconds to wait for ``/system``.
        transcode: load the GDCM plugin (Debian ``orthanc-gdcm``), so that WADO-RS can send JPEG 2000 instances
            in another transfer syntax; without it Orthanc 1.10 answers such a request with HTTP 500 ("Cannot
            transcode image") and serves them only as stored (``transfer-syntax=*``).

    Attributes:
        http: the REST root (``http://127.0.0.1:<port>``); ``dicomweb``: the DICOMweb root.
    """

    def __init__(self, root: str, start_timeout: float = 30.0, transcode: bool = False) -> None:
        self.root, self.start_timeout, self.transcode = str(root), start_timeout, transcode
        self.proc: Optional[subprocess.Popen] = None
        self.http = self.dicomweb = ""

    def __enter__(self) -> "LocalOrthanc":
        reason = orthanc_missing(self.transcode)
        if reason:
            raise RuntimeError(reason)
        os.makedirs(self.root, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = {
            "Name": "msa2net-local",
            "StorageDirectory": os.path.join(self.root, "db"),
            "IndexDirectory": os.path.join(self.root, "db"),
            "HttpPort": port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [PLUGIN] + ([GDCM_PLUGIN] if self.transcode else []),
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = os.path.join(self.root, "orthanc.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self._log = open(os.path.join(self.root, "orthanc.log"), "w")
        self.proc = subprocess.Popen([shutil.which("Orthanc"), path], stdout=self._log, stderr=subprocess.STDOUT)
        self.http = f"http://127.0.0.1:{port}"
        self.dicomweb = self.http + "/dicom-web"
        deadline = time.time() + self.start_timeout
        while True:
            try:
                urllib.request.urlopen(self.http + "/system", timeout=1).read()
                return self
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"Orthanc did not start (log: {self.root}/orthanc.log)") from None
                time.sleep(0.25)

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self._log.close()

    def upload(self, paths: Iterable[str]) -> int:
        """POSTs DICOM files to ``/instances`` (Orthanc's REST upload); returns how many were stored."""
        count = 0
        for path in paths:
            with open(path, "rb") as f:
                request = urllib.request.Request(self.http + "/instances", data=f.read(), method="POST")
            request.add_header("Content-Type", "application/dicom")
            answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
            count += answer.get("Status") in ("Success", "AlreadyStored")
        return count

    def get(self, path: str):
        """JSON of a REST ``GET`` (e.g. ``/series``)."""
        return json.loads(urllib.request.urlopen(self.http + path, timeout=60).read())


def main(argv=None) -> int:
    """``python -m bundle.data.orthanc --root /tmp/pacs [--upload study/]``: a local Orthanc until Ctrl-C."""
    import argparse
    import glob

    parser = argparse.ArgumentParser(description="A local Orthanc PACS (DICOMweb on loopback) until Ctrl-C.")
    parser.add_argument("--root", required=True, help="folder for its configuration, storage and log")
    parser.add_argument("--upload", default=None, help="a folder whose DICOM files (any depth) are stored first")
    args = parser.parse_args(argv)
    with LocalOrthanc(args.root) as pacs:
        if args.upload:
            files = [p for p in glob.glob(os.path.join(args.upload, "**", "*"), recursive=True) if os.path.isfile(p)]
            print(f"stored {pacs.upload(files)} of {len(files)} files from {args.upload}", flush=True)
        print(f"Orthanc: {pacs.http}  DICOMweb: {pacs.dicomweb}  (Ctrl-C stops it)", flush=True)
        try:
            while pacs.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
