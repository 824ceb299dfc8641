"""`.npy` / `.npz` arrays read one row (leading-axis slice) at a time.

`np.load` reads a whole array, and a memory map keeps every page it has touched
resident; a calibration set of 1,000 detector images is ~5 GB.  Here only the
header is read up front; `rows()` then reads `row_bytes` per step from the
file (or from the zip member, compressed or not), so memory is one row
whatever the file size.  Parsed as data only: object arrays (pickles) are refused.

Hand-written on numpy's public header readers (`np.lib.format.read_array_header_*`):
numpy, zarr and friends either load a whole `.npz` member or need a format of their own.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["StreamedArray", "open_npy", "open_npz", "ArrayFormatError"]


class ArrayFormatError(ValueError):
    """The file is not a readable, pickle-free .npy/.npz."""


@dataclass(frozen=True)
class StreamedArray:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    _open: Callable[[], AbstractContextManager[BinaryIO]]  # a stream positioned at the first data byte

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def rows(self) -> Iterator[np.ndarray]:
        """arr[0], arr[1], ... read one at a time (a 0-d array yields itself once)."""
        if self.fortran_order or self.ndim == 0:
            yield from (self.read_all(),) if self.ndim == 0 else self.read_all()
            return
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        with self._open() as f:
            for i in range(self.shape[0]):
                buf = f.read(row_bytes)
                if len(buf) != row_bytes:
                    raise ArrayFormatError(f"the data ends after {i} of {self.shape[0]} rows")
                yield np.frombuffer(buf, dtype=self.dtype).reshape(row_shape)

    def read_all(self) -> np.ndarray:
        with self._open() as f:
            data = f.read()
        count = int(np.prod(self.shape, dtype=np.int64))
        if len(data) < count * self.dtype.itemsize:
            raise ArrayFormatError("the data is shorter than its header says")
        arr = np.frombuffer(data, dtype=self.dtype, count=count)
        return arr.reshape(self.shape, order="F" if self.fortran_order else "C")


def _header(f: BinaryIO) -> tuple[tuple[int, ...], np.dtype, bool]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ArrayFormatError(f".npy format version {version} is not supported")
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise ArrayFormatError(str(e)) from e
    if dtype.hasobject:
        raise ArrayFormatError("object arrays need pickle, which qcompile never loads")
    return shape, dtype, fortran


def _opener(open_raw: Callable[[], AbstractContextManager[BinaryIO]]) -> StreamedArray:
    with open_raw() as f:
        shape, dtype, fortran = _header(f)
        offset = f.tell()

    @contextmanager
    def open_at_data() -> Iterator[BinaryIO]:
        with open_raw() as f:
            f.seek(offset)
            yield f

    return StreamedArray(tuple(shape), dtype, fortran, open_at_data)


def open_npy(path: Path) -> StreamedArray:
    return _opener(lambda: open(path, "rb"))


def open_npz(path: Path) -> dict[str, StreamedArray]:
    """The arrays of an .npz by name (member `x.npy` → `x`)."""
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if m.endswith(".npy")]
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ArrayFormatError(str(e)) from e

    def member(name: str) -> Callable[[], AbstractContextManager[BinaryIO]]:
        @contextmanager
        def open_member() -> Iterator[BinaryIO]:
            with zipfile.ZipFile(path) as z, z.open(name) as f:
                yield f  # type: ignore[misc]  # ZipExtFile is a binary stream

        return open_member

    try:
        return {m[: -len(".npy")]: _opener(member(m)) for m in members}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ArrayFormatError(str(e)) from e
