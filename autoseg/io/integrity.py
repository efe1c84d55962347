"""Cheap checks that an image file holds all the voxel data its header promises.

ITK reads a truncated ``.nii.gz`` or ``.nii`` without complaint and fills the missing voxels
with zeros (half a file: half the voxels wrong). :func:`check_complete` refuses such a file
before it is read, with one line naming it:

* ``.nii`` / ``.nii.gz``: the NIfTI-1/2 header gives ``vox_offset + voxels * bitpix / 8``
  bytes. A ``.nii`` file must be at least that long. A ``.nii.gz`` is decompressed as a stream
  in 1 MiB chunks (memory stays flat, nothing is kept) to count its bytes; zlib also checks each
  gzip member's end marker, CRC-32 and length, so a bit flip is caught as well as a cut. Cost:
  about 0.7x of ITK's own read of the file (``benchmarks/file_checks.py``).
* ``.mha`` / ``.mhd``: the bytes after the header (``.mha``) or in the data file the header
  names (``.mhd``) must cover the raw voxel data, or ``CompressedDataSize`` for compressed data.
  (ITK refuses such files too, but with the misleading "No such file or directory".)

NRRD files (``.nrrd``, ``.nhdr``) are left to ITK, which refuses truncated raw and gzip NRRD
data with a clear message of its own.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError

CHUNK = 1 << 20
_HINT = "the copy or download was cut short; copy the file again"


def _nifti_expected(head: bytes) -> int | None:
    """``vox_offset + data bytes`` from a NIfTI-1 or NIfTI-2 header, or None if ``head`` is not one."""
    for end in "<>":
        if len(head) >= 348 and struct.unpack(end + "i", head[:4])[0] == 348:
            dims = struct.unpack(end + "8h", head[40:56])
            bitpix = struct.unpack(end + "h", head[72:74])[0]
            offset = int(struct.unpack(end + "f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(end + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(end + "h", head[14:16])[0]
            dims = struct.unpack(end + "8q", head[16:80])
            offset = struct.unpack(end + "q", head[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1:dims[0] + 1]):
        return None
    return max(offset, 348) + int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]], dtype=np.int64)) * bitpix // 8


def _gunzipped_size(path: Path) -> int:
    """Bytes of the whole decompressed stream (every gzip member), read in :data:`CHUNK` pieces.

    AutosegError when the stream ends before its end marker or a member's CRC / length check fails.
    """
    n, d, ended = 0, zlib.decompressobj(wbits=31), False
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                while chunk:
                    n += len(d.decompress(chunk))
                    chunk, ended = b"", d.eof
                    if d.eof:  # a member ended (its CRC checked): what follows starts the next member
                        chunk, d = d.unused_data, zlib.decompressobj(wbits=31)
    except zlib.error as e:
        raise AutosegError(f"{path}: compressed data is corrupt ({e}); the file is damaged, copy it again") from None
    if not ended:
        raise AutosegError(f"{path}: file is truncated (the gzip stream ends early, after {n} decompressed bytes); {_HINT}")
    return n


def _check_nifti(path: Path, compressed: bool) -> None:
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                head = f.read(540)
        else:
            with open(path, "rb") as f:
                head = f.read(540)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
        return  # not readable as gzip at all: ITK's own error names the file
    expected = _nifti_expected(head)
    if expected is None:
        return
    if not compressed:
        have = path.stat().st_size
        if have < expected:
            raise AutosegError(f"{path}: file is truncated ({have} of {expected} bytes); {_HINT}")
        return
    have = _gunzipped_size(path)  # raises when the stream ends early or a CRC fails
    if have < expected:
        raise AutosegError(f"{path}: file is truncated ({have} of {expected} bytes after decompression); {_HINT}")


def _meta_data_bytes(path: Path) -> tuple[Path, int, dict[bytes, bytes]] | None:
    """(file holding the voxel data, its bytes of voxel data, header fields) of a MetaImage, or
    None when the data is not one file (a slice list or pattern) or the header cannot be parsed."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    m = re.search(rb"^ElementDataFile\s*=\s*(\S+)[^\n]*\n", head, re.M)
    if m is None:
        return None
    fields = dict(re.findall(rb"^(\w+)\s*=\s*([^\r\n]*)", head[:m.start()], re.M))
    if m.group(1) == b"LOCAL":
        return path, path.stat().st_size - m.end(), fields
    name = m.group(1).decode(errors="replace")
    data = path.parent / name
    if name in ("LIST", "List") or "%" in name or not data.is_file():
        return None  # ITK reports a missing data file itself
    try:
        skip = max(int(fields.get(b"HeaderSize", b"0").strip() or 0), 0)
    except ValueError:
        return None
    return data, data.stat().st_size - skip, fields


def _check_mha(path: Path) -> None:
    found = _meta_data_bytes(path)
    if found is None:
        return
    data, have, fields = found
    if fields.get(b"CompressedData", b"").strip().lower() == b"true":
        if not fields.get(b"CompressedDataSize", b"").strip().isdigit():
            return
        expected = int(fields[b"CompressedDataSize"])
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return
        item = sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID(), reader.GetNumberOfComponents())).itemsize
        expected = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents() * item
    if have < expected:
        raise AutosegError(f"{data}: file is truncated ({have} of {expected} bytes of voxel data"
                           f"{'' if data == path else f' for {path.name}'}); {_HINT}")


def check_complete(path: Path | str) -> None:
    """Raise AutosegError (one line naming ``path``) when the file holds less voxel data than its header says.

    Files whose format is not checked, or whose header cannot be parsed, pass: ITK's reader
    reports those itself.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz"):
            _check_nifti(path, compressed=True)
        elif name.endswith(".nii"):
            _check_nifti(path, compressed=False)
        elif name.endswith((".mha", ".mhd")):
            _check_mha(path)
    except OSError as e:  # unreadable (permissions, I/O error): a reading problem, not a full disk
        raise AutosegError(f"{path}: cannot read the file ({e.strerror or e}); check that it is readable") from None
