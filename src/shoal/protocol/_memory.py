"""Where a buffer's bytes are, and large ``bytes`` values built over huge pages.

``buffer_address`` reads a buffer's address through the buffer protocol
(``PyObject_GetBuffer``), read-only buffers included, which ctypes'
``from_buffer`` refuses: ``comm/_inplace.py`` uses it to find the shared
memory a frame lies in.

``bytes_from``: a received ``bytes`` value cannot live in the frame it
arrived in (a bytes object owns its memory), so unpickling it is one copy
into memory malloc maps fresh for it.  On the 2-core VM the benchmarks run
on, that copy is bound by page faults, one per 4 KiB page (and a hypervisor
exit for each page the host took back): 32 MiB copied at 1.2-1.5 GB/s.
Asking the kernel for transparent huge pages on that memory
(``MADV_HUGEPAGE``, honoured under the usual ``transparent_hugepage=madvise``
setting) makes it one fault per 2 MiB, and the same copy runs at 3.5-5 GB/s.
The bytes object is made uninitialised (``PyBytes_FromStringAndSize(NULL,
n)``, the C API's own way to build one), its memory advised, then filled
before anything else can see it.  Where huge pages are off the advice
changes nothing, and elsewhere than Linux it is plain ``bytes()``.

``bytes_buffer``: better still, a frame the sender flagged as a whole
``bytes`` object (``BYTES_FRAME``) is received straight into such an
uninitialised bytes object, through a writable view of its memory that only
the receiving connection holds, and then ``bytes_from`` has nothing to copy:
the frame is the value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

__all__ = ["buffer_address", "bytearray_from", "bytes_buffer", "bytes_from"]

_MADV_HUGEPAGE = 14
#: Huge pages are this large on x86-64 and arm64 (with 4 KiB base pages).
_HUGE = 2 * 1024 * 1024


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object
_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytearray.restype = ctypes.py_object
_view_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_view_memory.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
_view_memory.restype = ctypes.py_object
_PyBUF_WRITE = 0x200

_madvise: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _madvise = _libc.madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None


def buffer_address(obj: Any) -> tuple[int, int] | None:
    """Where a contiguous buffer's bytes are (read-only ones too), and how many;
    None for an object that is no contiguous buffer."""
    view = _PyBuffer()
    try:
        _get_buffer(obj, ctypes.byref(view), 0)  # PyBUF_SIMPLE: contiguous bytes
    except (BufferError, TypeError, ValueError):
        return None
    try:
        return int(view.buf or 0), int(view.len)
    finally:
        _release_buffer(ctypes.byref(view))


def bytes_from(buf: Any) -> bytes:
    """``bytes(buf)``; a large one with its memory on huge pages where the kernel can.
    A buffer that is the whole of a bytes object is that object (no copy)."""
    view = memoryview(buf)
    owner = view.obj
    while type(owner) is memoryview:  # a view of a view: the object under them
        owner = owner.obj
    if type(owner) is bytes and view.nbytes == len(owner):
        return owner
    return _copy(buf, _new_bytes, bytes)  # type: ignore[no-any-return]


def bytes_buffer(size: int) -> tuple[bytes, memoryview]:
    """A new ``bytes`` object of ``size`` bytes, not yet filled, and a writable
    view of its memory (on huge pages where the kernel can), to fill before
    anyone else sees the object.  The caller keeps the object alive as long
    as it uses the view."""
    out = _new_bytes(None, size)
    start = buffer_address(out)[0]  # type: ignore[index]
    _advise_huge(start, size)
    # a view with no owner (PyMemoryView_FromMemory): a ctypes array would do
    # too, but ctypes keeps one array type for each size ever asked, for good
    return out, _view_memory(start, size, _PyBUF_WRITE)


def bytearray_from(buf: Any) -> bytearray:
    """``bytearray(buf)``, the same way."""
    return _copy(buf, _new_bytearray, bytearray)  # type: ignore[no-any-return]


def _copy(buf: Any, make: Any, plain: type) -> Any:
    view = memoryview(buf)
    where = buffer_address(view) if _madvise is not None else None
    if where is None or where[1] < _HUGE:
        return plain(view)
    source, size = where
    out = make(None, size)  # uninitialised, and seen by no one until filled
    start = buffer_address(out)[0]  # type: ignore[index]
    _advise_huge(start, size)
    ctypes.memmove(start, source, size)  # lets go of the GIL; `view` keeps the source alive
    return out


def _advise_huge(start: int, size: int) -> None:
    """Ask for huge pages under the whole 2 MiB pages of a range (Linux only)."""
    first, last = -(-start // _HUGE) * _HUGE, (start + size) // _HUGE * _HUGE
    if _madvise is not None and last > first:
        _madvise(first, last - first, _MADV_HUGEPAGE)  # only advice: a refusal changes nothing
