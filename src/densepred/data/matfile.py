"""MATLAB MAT-files: v7.3 (HDF5 with a 512-byte MATLAB user block) writing and string cells, and
byte-reproducible v5 files.

The official NYUD-v2 `nyu_depth_v2_labeled.mat` is such a file (docs/data-formats.md §1.1): h5py reads it,
`scipy.io.loadmat` refuses it. Arrays appear transposed (MATLAB is column-major), and cell arrays of
strings are (1, n) datasets of HDF5 object references into the `#refs#` group, each pointing at a
(len, 1) uint16 array of character codes. This module writes files with that structure and decodes
such string cells; it knows nothing about NYUD itself. Headers carry a fixed creation date so that a
seed always gives the same bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import scipy.io

USERBLOCK_SIZE = 512
_HEADER_TEXT_SIZE = 116


def mat73_header(created: str = "Thu Jan  1 00:00:00 1970") -> bytes:
    """The 512-byte user block: descriptive text (116 bytes), 8 subsystem-offset bytes, version 0x0200
    and endian tag 'IM' at bytes 124..127, zeros after. A fixed date keeps files byte-reproducible."""
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    header = text.encode("ascii").ljust(_HEADER_TEXT_SIZE, b" ")
    header += b"\x00" * 8 + b"\x00\x02IM"
    return header.ljust(USERBLOCK_SIZE, b"\x00")


@contextlib.contextmanager
def mat73_writer(path: Path) -> Iterator[h5py.File]:
    """Open `path` as a new v7.3 MAT-file for writing; the MATLAB header is stamped on close."""
    path = Path(path)
    with h5py.File(path, "w", userblock_size=USERBLOCK_SIZE, libver="earliest") as f:
        yield f
    with open(path, "r+b") as raw:
        raw.write(mat73_header())


def save_mat5(
    path: Path, variables: dict[str, np.ndarray], created: str = "Thu Jan  1 00:00:00 1970"
) -> None:
    """Write a MATLAB v5 MAT-file (scipy) with a fixed header date, so the bytes are reproducible."""
    scipy.io.savemat(path, variables, format="5")
    text = f"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: {created}".encode("ascii")
    with open(path, "r+b") as raw:
        raw.write(text.ljust(_HEADER_TEXT_SIZE, b" "))


def set_matlab_class(dataset: h5py.Dataset | h5py.Group, matlab_class: str) -> None:
    """Tag an object with its MATLAB class (MATLAB reads it; h5py readers do not need it)."""
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)


def write_string_cell(f: h5py.File, name: str, strings: list[str]) -> None:
    """Write `strings` as a MATLAB (n x 1) cell of char arrays: a (1, n) reference dataset `name`."""
    refs_group = f.require_group("#refs#")
    refs = np.empty((1, len(strings)), dtype=h5py.ref_dtype)
    for i, text in enumerate(strings):
        codes = np.array([ord(c) for c in text], dtype=np.uint16).reshape(-1, 1)
        char = refs_group.create_dataset(f"{name}_{i}", data=codes)
        set_matlab_class(char, "char")
        char.attrs["MATLAB_int_decode"] = np.int32(2)
        refs[0, i] = char.ref
    cell = f.create_dataset(name, data=refs, dtype=h5py.ref_dtype)
    set_matlab_class(cell, "cell")


def decode_char(dataset: h5py.Dataset) -> str:
    """A MATLAB char array (uint16 codes, any 2-D orientation) as a Python string."""
    if dataset.attrs.get("MATLAB_empty", 0):
        return ""
    codes = np.asarray(dataset[()]).ravel(order="F")
    return "".join(chr(int(c)) for c in codes)


def read_string_cell(f: h5py.File, name: str) -> list[str]:
    """Decode a cell of strings (a reference dataset) in MATLAB linear order."""
    if name not in f:
        raise KeyError(f"{f.filename}: no variable {name!r}")
    refs = np.asarray(f[name][()])
    strings = []
    for ref in refs.ravel(order="F"):
        strings.append(decode_char(f[ref]))
    return strings
