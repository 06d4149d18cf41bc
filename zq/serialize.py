"""Pickling of functions, arguments and results.

* Functions are pickled once with cloudpickle (by value when the workers could
  not import them: ``__main__``, notebooks, local functions) and identified by a
  16-byte BLAKE2 digest of those bytes, so each worker receives each function
  once.
* Plain data (numbers, strings, bytes and containers of them) skips
  cloudpickle and uses the C pickler, protocol 5.
* Anything else goes through cloudpickle.  Both outputs load with
  :func:`pickle.loads`.
* A large ``bytes``, ``bytearray`` or ``memoryview`` argument (``OOB_MIN`` bytes
  or more, passed directly as an argument) is not copied into the pickle: it
  travels as a frame of its own (pickle protocol 5 out-of-band buffer), and
  ``bytes`` are sent straight from the caller's object (zero-copy; they cannot
  change).  A mutable buffer is copied once at submit, so changing it afterwards
  does not change the task.  Such arguments are an :class:`ArgFrames` list
  instead of one frame; a memoryview argument arrives as a read-only 1-D view.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from typing import Any, Callable

import cloudpickle
import msgpack

from .errors import SerializationError

OOB_MIN = 64 * 1024  # bytes: a buffer argument this large travels as its own frame
MULTI = b"ZQMF"  # prefix of several frames stored as one blob (journal, history, pipes)

_PLAIN_SCALARS = (int, float, str, bytes, bool, type(None), complex)
_SCALAR_SET = frozenset(_PLAIN_SCALARS)


def _is_plain(obj: Any, depth: int = 0) -> bool:
    t = type(obj)
    if t in _PLAIN_SCALARS:
        return True
    if depth > 4:
        return False
    if t is tuple or t is list:
        if len(obj) > 64:
            return False
        return all(_is_plain(x, depth + 1) for x in obj)
    if t is dict:
        if len(obj) > 64:
            return False
        return all(type(k) is str and _is_plain(v, depth + 1) for k, v in obj.items())
    return False


def dumps(obj: Any, what: str = "object") -> bytes:
    """Pickle ``obj``; SerializationError naming ``what`` if it cannot be pickled."""
    try:
        if type(obj) is tuple and len(obj) <= 8 and all(type(x) in _SCALAR_SET for x in obj):
            return pickle.dumps(obj, protocol=5)  # the common case: a few scalar arguments
        if _is_plain(obj):
            return pickle.dumps(obj, protocol=5)
        return cloudpickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise SerializationError(f"{what} could not be pickled: {type(exc).__name__}: {exc}") from exc


def loads(data: Any, what: str = "object") -> Any:
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"{what} could not be unpickled: {type(exc).__name__}: {exc}") from exc


def pack_value(value: Any, what: str = "result") -> "bytes | ArgFrames":
    """A task's return value pickled; a large ``bytes``/``bytearray``/``memoryview`` value
    travels out of band (an :class:`ArgFrames`), as large arguments do."""
    wrapped = _out_of_band(value)
    if wrapped is None:
        return dumps(value, what)
    return _pickle_out_of_band(wrapped, True, what)


def _pickle_out_of_band(obj: Any, plain: bool, what: str) -> "ArgFrames":
    """``obj`` (holding ``_OutOfBand`` wrappers) as the pickle stream plus one frame per
    buffer; ``plain``: nothing else in it needs cloudpickle."""
    bufs: list = []
    try:
        dump = pickle.dumps if plain else cloudpickle.dumps
        data = dump(obj, protocol=5, buffer_callback=bufs.append)
    except Exception as exc:
        raise SerializationError(f"{what} could not be pickled: {type(exc).__name__}: {exc}") from exc
    return ArgFrames([data, *(b.raw() for b in bufs)])


def loads_value(data: Any, what: str = "result") -> Any:
    """Inverse of :func:`pack_value` (also for its :func:`args_blob` form); b"" is None."""
    if type(data) is bytes and data.startswith(MULTI):
        data = args_from_blob(data)
    if type(data) is ArgFrames:
        try:
            return pickle.loads(data[0], buffers=data[1:])
        except Exception as exc:
            raise SerializationError(f"{what} could not be unpickled: {type(exc).__name__}: {exc}") from exc
    if not len(data):
        return None
    return loads(data, what)


def loads_args(data: Any) -> tuple[tuple, dict]:
    obj = loads_value(data, "task arguments")  # one frame, ArgFrames, or their stored blob
    if type(obj) is tuple and len(obj) == 2 and type(obj[0]) is tuple and type(obj[1]) is dict:
        # (args, kwargs) form; pack_args never sends a bare (tuple, dict) pair of
        # positional arguments without wrapping it, so this is unambiguous.
        return obj[0], obj[1]
    return obj, {}


def _ambiguous(args: tuple) -> bool:
    return len(args) == 2 and type(args[0]) is tuple and type(args[1]) is dict


class ArgFrames(list):
    """Pickled arguments as several frames: the pickle stream, then its out-of-band buffers."""

    __slots__ = ()


class _OutOfBand:
    """Pickles as ``kind(buffer)`` with the buffer out of band (protocol 5)."""

    __slots__ = ("data", "kind")

    def __init__(self, data: Any, kind: type) -> None:
        self.data = data
        self.kind = kind

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return self.kind, (pickle.PickleBuffer(self.data),)


def _out_of_band(x: Any) -> Any:
    """``x`` wrapped to travel out of band, or ``None`` when it stays in the pickle."""
    t = type(x)
    if t is bytes:
        return _OutOfBand(x, bytes) if len(x) >= OOB_MIN else None
    if t is bytearray:
        return _OutOfBand(bytes(x), bytearray) if len(x) >= OOB_MIN else None
    if t is memoryview and x.nbytes >= OOB_MIN and x.ndim == 1 and x.format in ("B", "b", "c") \
            and x.c_contiguous:
        return _OutOfBand(x.tobytes(), memoryview)
    return None


_BUFFERS = frozenset({bytes, bytearray, memoryview})


def _pack_out_of_band(args: tuple, kwargs: dict) -> "ArgFrames | None":
    if _BUFFERS.isdisjoint(map(type, args)) and (not kwargs or _BUFFERS.isdisjoint(map(type, kwargs.values()))):
        return None  # the common case, checked in C
    wrapped_args = tuple(_out_of_band(x) or x for x in args)
    wrapped_kw = {k: _out_of_band(v) or v for k, v in kwargs.items()}
    wrapped = (wrapped_args, wrapped_kw) if kwargs or _ambiguous(args) else wrapped_args
    rest = [x for x in (*wrapped_args, *wrapped_kw.values()) if type(x) is not _OutOfBand]
    if len(rest) == len(args) + len(kwargs):
        return None  # no buffer large enough
    return _pickle_out_of_band(wrapped, _is_plain(rest), "task arguments")


def pack_args(args: tuple, kwargs: dict, oob: bool = False) -> "bytes | ArgFrames":
    """Arguments as one pickled frame (or, with ``oob``, an :class:`ArgFrames` when a large
    buffer argument travels out of band); ``loads_args`` inverts either."""
    if oob:
        frames = _pack_out_of_band(args, kwargs)
        if frames is not None:
            return frames
    if kwargs or _ambiguous(args):
        return dumps((args, kwargs), "task arguments")
    return dumps(args, "task arguments")


def args_size(data: Any) -> int:
    """Bytes on the wire of packed arguments (one frame or ArgFrames)."""
    if type(data) is ArgFrames:
        return sum(memoryview(f).nbytes for f in data)
    return len(data)


def args_blob(data: Any) -> bytes:
    """Packed arguments as one ``bytes`` (to store, or to pass through a pipe)."""
    if type(data) is ArgFrames:
        return MULTI + msgpack.packb([bytes(f) for f in data], use_bin_type=True)
    return bytes(data)


def args_from_blob(blob: Any) -> Any:
    """Inverse of :func:`args_blob`."""
    if type(blob) is bytes and blob.startswith(MULTI):
        try:
            frames = msgpack.unpackb(memoryview(blob)[4:], raw=False)
        except Exception as exc:
            raise SerializationError(f"a damaged multi-frame blob: {exc}") from None
        if not (isinstance(frames, list) and frames and all(type(f) is bytes for f in frames)):
            raise SerializationError("task arguments: a damaged multi-frame blob")
        return ArgFrames(frames)
    return blob


class FunctionCache:
    """Pickled functions by identity: ``fn -> (digest, bytes)``, pickled once."""

    def __init__(self, limit: int = 4096) -> None:
        self._by_fn: dict[Any, tuple[bytes, bytes]] = {}
        self._info: dict[Any, tuple[str, bool]] = {}
        self._limit = limit

    def info(self, fn: Callable) -> tuple[str, bool]:
        """``(function_name(fn), is_async(fn))``, looked up once per function."""
        return self._memo(self._info, fn, _describe)

    def get(self, fn: Callable) -> tuple[bytes, bytes]:
        """``(digest, pickled bytes)``, pickled once per function."""
        return self._memo(self._by_fn, fn, pickle_function)

    def _memo(self, table: dict, fn: Callable, make: Callable[[Callable], Any]) -> Any:
        try:
            hit = table.get(fn)
        except TypeError:  # unhashable callable: nothing to remember it by
            return make(fn)
        if hit is None:
            hit = make(fn)
            if len(table) >= self._limit:
                table.clear()
            table[fn] = hit
        return hit


def _ship_by_value_if_local(fn: Any) -> None:
    """Register the function's module for pickling by value unless it is installed.

    Workers on other machines can import installed packages (site-packages, the
    standard library) but not a user's script directory or notebook, so those
    modules travel by value.  ``__main__`` is always by value in cloudpickle.
    """
    name = getattr(fn, "__module__", None)
    if not name or name == "__main__" or name in _BY_VALUE_CHECKED:
        return
    _BY_VALUE_CHECKED.add(name)
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None)
    if mod is None or not path or name.split(".")[0] in ("zq", "nodes", "bench"):
        return
    path = os.path.realpath(path)
    if any(path.startswith(p) for p in _installed_prefixes()):
        return
    try:
        cloudpickle.register_pickle_by_value(mod)
    except Exception:  # not a real module object; pickle by reference as usual
        pass


_BY_VALUE_CHECKED: set = set()


def _installed_prefixes() -> list[str]:
    import sysconfig

    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return [os.path.realpath(p) for p in paths if p]


def pickle_function(fn: Callable) -> tuple[bytes, bytes]:
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    _ship_by_value_if_local(getattr(fn, "fn", fn) if getattr(fn, "_zq_task", False) else fn)
    try:
        data = cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"function {getattr(fn, '__qualname__', fn)!r} could not be pickled: {type(exc).__name__}: {exc}"
        ) from exc
    return hashlib.blake2b(data, digest_size=16).digest(), data


def _describe(fn: Any) -> tuple[str, bool]:
    from .runner import is_async  # runner imports this module

    return function_name(fn), is_async(fn)


def function_name(fn: Any) -> str:
    inner = getattr(fn, "fn", None)  # a zq.task
    target = inner if inner is not None and getattr(fn, "_zq_task", False) else fn
    mod = getattr(target, "__module__", None) or ""
    qual = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or type(target).__name__
    return f"{mod}.{qual}" if mod else str(qual)
