"""DICOM SEG out: the label map of a DICOM CT series as a Segmentation object a PACS or viewer reads back
(highdicom, BINARY, one frame per source slice and organ present).

* one segment per organ present in the mask, numbered 1..n in label order (DICOM requires consecutive segment
  numbers; an organ the network did not find gets no segment, as TotalSegmentator and viewers expect), labelled with
  the organ's name, coded in SNOMED CT (category 123037004 *Anatomical Structure*; the kidneys with laterality);
* each frame references the source instance it was computed on (so irregular spacing, gantry tilt and missing
  slices are exact: frames exist for the scanned slices only);
* algorithm identification: MSA2Net, the bundle version, the checkpoint file and its SHA-256;
* Study, Patient and Frame of Reference from the source; Series and SOP Instance UIDs new but deterministic
  (derived from the source series, the checkpoint and the mask), so re-running the same model on the same series
  makes the same object and a PACS stores it once;
* a mask with no organ at all gets no SEG (a SEG needs at least one segment): a warning says so.

The codes and their sources are listed in ``docs/clinical.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.transforms import MapTransform

from bundle import __version__
from bundle.errors import InputError
from bundle.io.atomic import atomic_path
from bundle.io.dicom_reader import dicom_record
from bundle.io.provenance import file_sha256
from bundle.io.volume import output_path

logger = logging.getLogger(__name__)

# organ name → (SNOMED CT code, meaning, laterality (code, meaning) or None); TotalSegmentator's and dcmqi's codes
SNOMED: Dict[str, Tuple[str, str, Optional[Tuple[str, str]]]] = {
    "spleen": ("78961009", "Spleen", None),
    "right_kidney": ("64033007", "Kidney", ("24028007", "Right")),
    "left_kidney": ("64033007", "Kidney", ("7771000", "Left")),
    "gallbladder": ("28231008", "Gallbladder", None),
    "liver": ("10200004", "Liver", None),
    "stomach": ("69695003", "Stomach", None),
    "aorta": ("15825003", "Aorta", None),
    "pancreas": ("15776009", "Pancreas", None),
}
ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
# the viewer colours of bundle.evaluation.plots.ORGAN_COLORS (matplotlib tab10 / gold), as RGB
_COLORS = [(214, 39, 40), (31, 119, 180), (23, 190, 207), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (255, 215, 0), (227, 119, 194)]  # fmt: skip


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)


def segment_descriptions(
    labels: Sequence[int], names: Sequence[str], algorithm, uid_seed: Sequence[str] = ()
) -> List[Any]:
    """highdicom SegmentDescriptions for the label values ``labels`` (segments 1..n in that order).

    Args:
        labels: label values present in the mask (1..), ascending.
        names: names of labels 1..N (``names[v - 1]`` names value ``v``).
        algorithm: a ``highdicom.AlgorithmIdentificationSequence``.
        uid_seed: what the tracking UIDs derive from (with the label value), so one mask gives one object.
    """
    import highdicom as hd
    from pydicom import Dataset
    from pydicom.uid import generate_uid

    out = []
    for number, value in enumerate(labels, start=1):
        name = names[value - 1] if value - 1 < len(names) else f"label_{value}"
        key = name.strip().lower().replace(" ", "_")  # "right kidney" and "right_kidney" name one organ
        code, meaning, side = SNOMED.get(key, (ANATOMICAL_STRUCTURE[0], ANATOMICAL_STRUCTURE[1], None))
        if key not in SNOMED:
            logger.warning(f"label {value} ({name}) has no SNOMED CT code here: coded as Anatomical Structure")
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name.replace("_", " ")[:64],
            segmented_property_category=_code(*ANATOMICAL_STRUCTURE),
            segmented_property_type=_code(code, meaning),
            algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
            tracking_id=f"label {value}",
            tracking_uid=generate_uid(entropy_srcs=[*uid_seed, "tracking", str(value)]),
            display_color=hd.color.CIELabColor.from_rgb(*_COLORS[(value - 1) % len(_COLORS)]),
        )
        if side is not None:
            modifier = Dataset()
            modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = side[0], "SCT", side[1]
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        out.append(desc)
    return out


def read_sources(files: Sequence[str]) -> List[Any]:
    """The source headers (no pixel data) with SOP Instance/Class UIDs restored from the file meta where an
    export emptied them in the dataset (PS3.10 makes the two equal)."""
    import pydicom

    out = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        out.append(ds)
    return out


def build_seg(
    mask: np.ndarray,
    files: Sequence[str],
    names: Sequence[str],
    checkpoints: Sequence[str] = (),
    slice_spacing: Optional[float] = None,
):
    """A highdicom ``Segmentation`` of ``mask`` (H=columns, W=rows, D grid slices, as the NIfTI writer gets it).

    Args:
        mask: integer label map on the series' voxel grid ((columns, rows, slices) as the reader returned it).
        files: source instance per grid slice ('' where a slice is missing: no frame there).
        names: names of labels 1..N.
        checkpoints: the weights' file(s) (an ensemble: every member), named and hashed (SHA-256) in the algorithm
            identification; the hashes feed the UIDs.
        slice_spacing: the grid's slice step (mm) when the slices are evenly spaced (missing ones allowed): written
            as SpacingBetweenSlices, which readers such as dcmqi take over SliceThickness (they differ for
            overlapping reconstructions, e.g. 3 mm slices every 2 mm); ``None`` for irregular or tilted series.

    Returns:
        The Segmentation, or ``None`` when the mask holds no label.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    kept = [k for k, f in enumerate(files) if f]
    frames = np.ascontiguousarray(np.transpose(mask[:, :, kept], (2, 1, 0))).astype(np.uint8)  # (F, rows, cols)
    labels = [int(v) for v in np.unique(frames) if v > 0]
    if not labels:
        return None
    consecutive = np.zeros(max(labels) + 1, dtype=np.uint8)
    consecutive[labels] = np.arange(1, len(labels) + 1)
    sources = read_sources([files[k] for k in kept])
    first = sources[0]
    hashes = [file_sha256(c) for c in checkpoints]
    parameters = {"checkpoint": "+".join(os.path.basename(c) for c in checkpoints) or "none"}  # "," separates keys
    if hashes:
        parameters["checkpoint_sha256"] = "+".join(hashes)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MSA2Net",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        source="msa2net-bundle",
        parameters=parameters,
    )
    entropy = [str(first.SeriesInstanceUID), *hashes, hashlib.sha256(frames.tobytes()).hexdigest()]
    number = first.get("SeriesNumber")
    description = f"{first.get('SeriesDescription', '') or 'CT'} MSA2Net segmentation"
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=consecutive[frames],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(labels, names, algorithm, entropy),
        series_instance_uid=generate_uid(entropy_srcs=entropy + ["series"]),
        series_number=int(number) + 1000 if number not in (None, "") else 1000,
        sop_instance_uid=generate_uid(entropy_srcs=entropy + ["instance"]),
        instance_number=1,
        manufacturer="msa2net-bundle",
        manufacturer_model_name="MSA2Net",
        software_versions=__version__,
        device_serial_number="none",
        content_label="MSA2NET",
        content_description="MSA2Net organ segmentation (automatic)",
        series_description=description[:64],
        omit_empty_frames=True,
    )
    if slice_spacing:  # highdicom fills it only when the frames it keeps are evenly spaced (no missing slice)
        seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = f"{slice_spacing:.6g}"
    return seg


class SaveDicomSegd(MapTransform):
    """Writes ``key`` (1, H, W, D), on a DICOM input's grid, as ``<output_dir>/<case>_<postfix>.dcm``, atomically.

    Args:
        keys: prediction key (after ``Invertd``, as for the NIfTI writer).
        output_dir: destination folder.
        label_names: names of labels 1..N (the config's ``label_names``: Synapse's 8 organs for this bundle); a label
            without a name is written as ``label_<value>``.
        checkpoints: the checkpoint(s) whose weights made the mask (an ensemble: every member; named and hashed in
            the SEG).
        postfix: file name suffix.
        overwrite: replace an existing SEG.
    """

    def __init__(
        self,
        keys: str = "pred",
        output_dir: str = "./eval",
        label_names: Optional[Sequence[str]] = None,
        checkpoints: Sequence[str] = (),
        postfix: str = "seg",
        overwrite: bool = False,
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.postfix, self.overwrite = output_dir, postfix, overwrite
        self.names = list(label_names or [])
        self.checkpoints = [str(c) for c in checkpoints if c and os.path.isfile(str(c))]

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            meta = getattr(pred, "meta", {})
            src = str(meta.get("filename_or_obj"))
            record = dicom_record(meta)
            files = record.get("files")
            if not files:
                raise InputError(
                    f"{src} is not a DICOM series: a DICOM SEG references DICOM source images; use --output_type nifti."
                )
            dst = output_path(src, self.output_dir, self.postfix, ext=".dcm")
            if os.path.exists(dst) and not self.overwrite:
                continue
            arr = pred.detach().cpu().numpy() if torch.is_tensor(pred) else np.asarray(pred)
            if arr[0].shape[2] != len(files):
                raise ValueError(f"the prediction for {src} has {arr[0].shape[2]} slices, its series {len(files)}.")
            seg = build_seg(arr[0], files, self.names, self.checkpoints, record.get("slice_spacing"))
            if seg is None:
                logger.warning(f"{src}: no organ found, so no DICOM SEG written (a SEG needs at least one segment)")
                continue
            with atomic_path(dst) as tmp:
                seg.save_as(tmp)
            d[f"{key}_seg_path"] = dst
            logger.info(f"{src}: DICOM SEG {dst} (SOPInstanceUID {seg.SOPInstanceUID})")
        return d
