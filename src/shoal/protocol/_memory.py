"""Where a buffer's bytes are, and large ``bytes`` values filled in one copy.

``buffer_address`` reads a buffer's address through the buffer protocol
(``PyObject_GetBuffer``), read-only buffers included, which ctypes'
``from_buffer`` refuses: ``comm/_inplace.py`` uses it to find the shared
memory a frame lies in.

``bytes_from``: a received ``bytes`` value cannot live in the frame it
arrived in (a bytes object owns its memory), so unpickling it is one copy
into memory malloc maps fresh for it, bound by the page faults that commit
that memory.  A large one is made uninitialised
(``PyBytes_FromStringAndSize(NULL, n)``, the C API's own way to build one)
and filled by :func:`._copy.copy`, over the idle cores, before anything
else can see it.

``bytes_buffer``: better still, a frame the sender flagged as a whole
``bytes`` object (``BYTES_FRAME``) is received straight into such an
uninitialised bytes object, through a writable view of its memory that only
the receiving connection holds, while helper threads commit its pages ahead
of the socket (:func:`._copy.prefault`); then ``bytes_from`` has nothing to
copy: the frame is the value.
"""

from __future__ import annotations

import ctypes
from typing import Any

from . import _copy

__all__ = ["buffer_address", "bytearray_from", "bytes_buffer", "bytes_from"]


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
    """``bytes(buf)``, a large one copied over the idle cores.  A buffer that
    is the whole of a bytes object is that object (no copy)."""
    view = memoryview(buf)
    owner = view.obj
    while type(owner) is memoryview:  # a view of a view: the object under them
        owner = owner.obj
    if type(owner) is bytes and view.nbytes == len(owner):
        return owner
    return _copy_into(buf, _new_bytes, bytes)  # type: ignore[no-any-return]


def bytes_buffer(size: int) -> tuple[bytes, memoryview]:
    """A new ``bytes`` object of ``size`` bytes, not yet filled, and a writable
    view of its memory (its pages committed ahead by helper threads), to fill
    from the front before anyone else sees the object.  The caller keeps the
    object alive as long as it uses the view."""
    out = _new_bytes(None, size)
    start = buffer_address(out)[0]  # type: ignore[index]
    _copy.prefault(out, start, size)
    # a view with no owner (PyMemoryView_FromMemory): a ctypes array would do
    # too, but ctypes keeps one array type for each size ever asked, for good
    return out, _view_memory(start, size, _PyBUF_WRITE)


def bytearray_from(buf: Any) -> bytearray:
    """``bytearray(buf)``, the same way."""
    return _copy_into(buf, _new_bytearray, bytearray)  # type: ignore[no-any-return]


def _copy_into(buf: Any, make: Any, plain: type) -> Any:
    view = memoryview(buf)
    where = buffer_address(view) if view.nbytes >= _copy.PARALLEL_MIN_BYTES else None
    if where is None:  # small, or not contiguous
        return plain(view)
    source, size = where
    out = make(None, size)  # uninitialised, and seen by no one until filled
    _copy.copy(buffer_address(out)[0], source, size)  # type: ignore[index]
    return out  # `view` kept the source alive through the copy
