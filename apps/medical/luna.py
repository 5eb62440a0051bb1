"""LUNA16 in its original layout: ``subset*/<seriesuid>.mhd`` + ``.raw`` and ``annotations.csv``.

A small MetaImage (.mhd) reader/writer (no SimpleITK/ITK needed): uncompressed or zlib-compressed
(``CompressedData = True``) raw data, MET_* element types, ``TransformMatrix`` direction cosines,
``Offset`` origin (world = LPS mm, as ITK writes them). ``annotations.csv`` rows are
``seriesuid,coordX,coordY,coordZ,diameter_mm`` in the same world coordinates.

LUNA16 has no malignancy rating: a case's label here is "has at least one annotated nodule" (the
LUNA16 annotations are the LIDC nodules >= 3 mm that at least 3 of 4 readers marked).
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.medical.ingest import LPS_TO_RAS, CTVolume, IngestError, IngestLimits, _check_hu, _check_voxels

MET_TYPES = {
    "MET_CHAR": np.int8, "MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16,
    "MET_INT": np.int32, "MET_UINT": np.uint32, "MET_LONG": np.int64, "MET_ULONG": np.uint64,
    "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}


def read_mhd_header(path: Path) -> dict[str, str]:
    header: dict[str, str] = {}
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            if "=" not in line:
                continue
            key, value = line.split("=", 1)
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    return header


def read_mhd(path: str | Path, limits: IngestLimits | None = None) -> CTVolume:
    """A 3-D MetaImage -> CTVolume (HU assumed, as LUNA16 stores them; checked like any CT)."""
    limits = limits or IngestLimits()
    path = Path(path)
    h = read_mhd_header(path)
    try:
        ndims = int(h.get("NDims", "3"))
        dims = [int(v) for v in h["DimSize"].split()]
        spacing = [float(v) for v in (h.get("ElementSpacing") or h.get("ElementSize") or "1 1 1").split()]
        origin = [float(v) for v in (h.get("Offset") or h.get("Origin") or h.get("Position") or "0 0 0").split()]
        direction = [float(v) for v in (h.get("TransformMatrix") or h.get("Rotation") or h.get("Orientation")
                                        or "1 0 0 0 1 0 0 0 1").split()]
        dtype = np.dtype(MET_TYPES[h["ElementType"]])
        data_file = h["ElementDataFile"]
    except (KeyError, ValueError) as exc:
        raise IngestError(f"{path.name}: malformed MetaImage header ({exc}).", code="bad_geometry") from None
    if ndims != 3 or len(dims) != 3 or len(spacing) < 3 or len(origin) < 3 or len(direction) != 9:
        raise IngestError(f"{path.name}: a 3-D MetaImage is required.", code="bad_geometry")
    _check_voxels(tuple(dims), limits)
    if data_file == "LOCAL":
        raise IngestError(f"{path.name}: header-embedded data (.mha style) is not supported; use .mhd + .raw.",
                          code="unsupported_type", status_code=415)
    raw_path = (path.parent / data_file).resolve()
    if path.parent.resolve() not in raw_path.parents:
        raise IngestError(f"{path.name}: ElementDataFile must sit beside the header.", code="unsafe_path")
    if not raw_path.is_file():
        raise IngestError(f"{path.name}: data file {data_file} not found.", code="not_found", status_code=404)
    raw = raw_path.read_bytes()
    if h.get("CompressedData", "False").lower() == "true":
        try:
            raw = zlib.decompress(raw)
        except zlib.error:
            raise IngestError(f"{path.name}: compressed data cannot be inflated.", code="corrupt_mhd") from None
    if h.get("BinaryDataByteOrderMSB", h.get("ElementByteOrderMSB", "False")).lower() == "true":
        dtype = dtype.newbyteorder(">")
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise IngestError(f"{path.name}: data holds {len(raw)} bytes, the header implies {expected}.", code="corrupt_mhd")
    arr = np.frombuffer(raw, dtype=dtype).reshape(dims[::-1])  # (Z, Y, X): x varies fastest
    data = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)).astype(np.float32))  # (X, Y, Z)
    # MetaIO's TransformMatrix lists the direction cosines of each axis in turn
    D = np.array(direction, dtype=float).reshape(3, 3).T
    affine = np.eye(4)
    affine[:3, :3] = D * np.array(spacing[:3])[None, :]
    affine[:3, 3] = origin[:3]
    _check_hu(data, path.name)
    return CTVolume(data=data, affine_ras=LPS_TO_RAS @ affine, source_format="mhd",
                    series_uid=path.stem, meta={"slices": dims[2]})


def write_mhd(path: str | Path, volume_zyx: np.ndarray, spacing_xyz, origin_xyz, compressed: bool = False) -> Path:
    """Write int16 HU (z, y, x) as LUNA16 does (MET_SHORT, identity direction)."""
    path = Path(path)
    raw_name = path.with_suffix(".zraw" if compressed else ".raw").name
    data = np.ascontiguousarray(volume_zyx.astype("<i2")).tobytes()
    if compressed:
        data = zlib.compress(data)
    (path.parent / raw_name).write_bytes(data)
    nz, ny, nx = volume_zyx.shape
    lines = [
        "ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
        f"CompressedData = {compressed}", "TransformMatrix = 1 0 0 0 1 0 0 0 1",
        f"Offset = {' '.join(f'{v:g}' for v in origin_xyz)}", "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI", f"ElementSpacing = {' '.join(f'{v:g}' for v in spacing_xyz)}",
        f"DimSize = {nx} {ny} {nz}", "ElementType = MET_SHORT", f"ElementDataFile = {raw_name}",
    ]
    if compressed:
        lines.insert(5, f"CompressedDataSize = {len(data)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def world_to_voxel(volume: CTVolume, xyz_world_lps: np.ndarray) -> np.ndarray:
    """LUNA16 world (LPS mm) -> fractional voxel index (i, j, k) of ``volume.data``."""
    ras = LPS_TO_RAS[:3, :3] @ np.asarray(xyz_world_lps, float)
    return np.linalg.solve(volume.affine_ras[:3, :3], ras - volume.affine_ras[:3, 3])


@dataclass
class LunaNodule:
    xyz_mm: tuple[float, float, float]  # world (LPS) coordinates, mm
    diameter_mm: float


@dataclass
class LunaCase:
    series_uid: str
    mhd: Path
    subset: str
    nodules: list[LunaNodule] = field(default_factory=list)

    @property
    def label(self) -> int:
        return int(bool(self.nodules))

    def volume(self, limits: IngestLimits | None = None) -> CTVolume:
        return read_mhd(self.mhd, limits)


def load_luna(root: str | Path, annotations: str | Path | None = None) -> list[LunaCase]:
    """Every ``subset*/*.mhd`` under root, with its rows of ``annotations.csv`` (root or CSVFILES/)."""
    root = Path(root)
    cases = {p.stem: LunaCase(p.stem, p, p.parent.name) for p in sorted(root.glob("subset*/*.mhd"))}
    if not cases:
        cases = {p.stem: LunaCase(p.stem, p, "") for p in sorted(root.glob("*.mhd"))}
    if annotations is None:
        for candidate in (root / "annotations.csv", root / "CSVFILES" / "annotations.csv"):
            if candidate.is_file():
                annotations = candidate
                break
    if annotations is not None:
        with open(annotations, newline="") as fh:
            for row in csv.DictReader(fh):
                case = cases.get(row["seriesuid"])
                if case is not None:
                    case.nodules.append(LunaNodule((float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])),
                                                   float(row["diameter_mm"])))
    return list(cases.values())
