"""Spill files of the out-of-core gate: Arrow IPC stages on disk, read back memory-mapped (zero-copy), and the
thread that hands the pages a check touched back to the page cache so RSS holds the heap, not every stage.

`ArrayStore` lets a check keep a large working array (near_dup's shingle store) the same way while the gate runs
out of core (`parking`): built chunk by chunk straight into an unlinked spill file and read back memory-mapped.
Outside `parking` it is a plain in-memory array, so the check's code and results do not depend on where it runs.
"""

from __future__ import annotations

import contextlib
import mmap
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pyarrow as pa

_PAGE_RETURN_S = 0.2  # how often touched pages of the memory-mapped stages go back to the page cache


class Spill:
    """Arrow IPC files under one temporary folder, read back memory-mapped (zero-copy)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def path(self, stem: str) -> Path:
        self.count += 1
        return self.root / f"{self.count:04d}-{stem}.arrow"

    def write(self, stem: str, batches: Iterator[pa.RecordBatch] | Sequence[pa.RecordBatch],
              schema: pa.Schema) -> Path:
        p = self.path(stem)
        with pa.OSFile(str(p), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for b in batches:
                if b.num_rows:
                    w.write_batch(b)
        return p

    @staticmethod
    def open(p: Path) -> pa.Table:
        # Mapped by Python's mmap (not pa.memory_map) so the pages a check touched can be handed back (madvise);
        # the Arrow buffers keep the mapping alive, and it leaves the page returner when they are gone.
        with open(p, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        PAGES.add(mm)
        return pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mm))).read_all()

    def stage(self, p: Path) -> pa.Table:
        """`open`, then unlink the file: nothing opens a stage twice, so its disk space goes back as soon as its
        table is released (POSIX keeps a mapped file's data until it is unmapped), not at the end of the run."""
        t = self.open(p)
        p.unlink()
        return t


class PageReturner:
    """Hands the touched pages of the read-only stage mappings back to the page cache, every `interval` s.

    A memory-mapped stage keeps every page a check has read in the process's resident set (file pages, but
    counted in RSS and in the kernel's view of the process), so a scan over a 5 GB stage would hold 5 GB.
    MADV_DONTNEED on a read-only shared file mapping only drops this process's page-table entries: the data
    stays in the page cache (evictable) and a later read faults it back in, unchanged. So it is safe at any
    moment, also while a check reads the same pages, and RSS then holds the heap plus recently read pages.
    The thread runs while some mapping is alive.
    """

    def __init__(self, interval: float = _PAGE_RETURN_S) -> None:
        self.interval = interval
        self.maps: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, mm: mmap.mmap) -> None:
        with self.lock:
            self.maps.add(mm)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="dpo-gate-pages", daemon=True)
                self.thread.start()

    def release(self) -> None:
        for mm in list(self.maps):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (ValueError, OSError):  # closed meanwhile
                pass

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            with self.lock:
                if not self.maps:
                    self.thread = None
                    return
            self.release()


PAGES = PageReturner()


_PARKING: ContextVar[Path | None] = ContextVar("dpo_gate_parking", default=None)


@contextlib.contextmanager
def parking(root: Path) -> Iterator[None]:
    """While active (in this thread/context), `ArrayStore`s are spilled under `root`."""
    token = _PARKING.set(root)
    try:
        yield
    finally:
        _PARKING.reset(token)


class ArrayStore:
    """A 1-d array built by appending chunks: in memory, or under `parking` in an unlinked spill file that is
    read back memory-mapped (pages handed back by PAGES), so it never sits whole in the heap.

    In memory, each chunk is freed as soon as it is copied into the result, so the peak is the result plus one
    chunk, not twice the result.
    """

    def __init__(self, dtype: np.dtype | type) -> None:
        self.dtype = np.dtype(dtype)
        root = _PARKING.get()
        self.file = tempfile.TemporaryFile(dir=root, prefix="dpo-array-") if root is not None else None
        self.chunks: list[np.ndarray] = []
        self.size = 0

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        self.size += chunk.size
        if self.file is not None:
            self.file.write(chunk.data)
        else:
            self.chunks.append(chunk)

    def finish(self) -> np.ndarray:
        if self.file is None:
            out = np.empty(self.size, self.dtype)
            at = 0
            self.chunks.reverse()
            while self.chunks:
                c = self.chunks.pop()
                out[at:at + c.size] = c
                at += c.size
            return out
        with self.file:
            self.file.flush()
            if self.size == 0:
                return np.empty(0, self.dtype)
            mm = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        PAGES.add(mm)
        return np.frombuffer(mm, dtype=self.dtype, count=self.size)
