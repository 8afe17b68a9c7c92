"""The one validation layer for files and command-line values users hand us, and safe output files.

Every reader of a user file (checkpoint configs and tensors, the guidance store, HDF5 datasets, LeRobot policy
directories, MCAP recordings, YAML configs) checks what it reads here *before* allocating or trusting it:

* :class:`InputError` — a file or value the user can fix.  ``dynaguide`` prints it as one line on stderr
  (``dynaguide: error: <file>: <what> — <fix>``) and exits with 2; ``--debug`` / ``DYNAGUIDE_DEBUG=1`` show the
  traceback.  :class:`dynaguide.config.ConfigError`, :class:`dynaguide.recordings.RecordingError` and
  :class:`dynaguide.datasets_external.ExternalDatasetError` are InputErrors.
* sizes: :func:`safetensors_header` reads a safetensors file's declared tensors without loading them;
  :func:`check_hdf5_dataset` compares an HDF5 dataset's declared bytes with a cap and with the bytes the file
  really stores (a 4.7 KB file must not make us allocate 52 GiB).
* values: :func:`check_finite_tensors`.
* paths: :func:`confined_file` (a file named inside a directory stays inside it: no ``..``, no absolute path,
  no symlink out).
* outputs: :func:`refuse_overwrite` (never an input, never an existing file without ``--overwrite``) and
  :func:`atomic_output` (write a temp file next to the target, rename on success, remove the temp file on every
  error path and on SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

DEBUG_ENV = "DYNAGUIDE_DEBUG"
"""Set to 1 to see the traceback of an error ``dynaguide`` would otherwise print as one line."""

MAX_HEADER_BYTES = 100 * 2**20
"""Largest safetensors JSON header read (the format's own limit is 100 MB)."""

MAX_IN_MEMORY_BYTES = 2 * 2**30
"""Largest HDF5 array read into memory at once (actions, proprio, states, preloaded images): 2 GiB."""

MAX_COMPRESSION_RATIO = 1100
"""An HDF5 dataset may declare at most this many times the bytes the file stores for it (gzip's best ratio is
about 1032:1); more means unwritten storage (a forged or truncated file) whose read would only allocate."""


class InputError(ValueError):
    """A file or command-line value the user gave cannot be used.  The message is one line naming the file or
    option, what is wrong and, where there is one, the fix."""


def one_line(text: object, limit: int = 2000) -> str:
    """``text`` on one line (newlines become ``; ``), at most ``limit`` characters."""
    from dynaguide.text import clip_text

    s = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return clip_text(s, limit)


# ------------------------------------------------------------------------------------------ tensors / sizes
SAFETENSORS_ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                          "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
SAFETENSORS_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors a safetensors file declares, ``{name: (dtype, shape)}`` (dtype as in the file: ``F32``...),
    read from its JSON header only; raises :class:`InputError` when the header is malformed or declares more
    bytes than the file holds (nothing is allocated by the tensors themselves)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{path} is not a valid safetensors file: {size} bytes, too short")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise InputError(f"{path} is not a valid safetensors file: header length {n} exceeds the file "
                                 f"({size} bytes); truncated or another format")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a valid safetensors file: {one_line(exc, 200)}") from exc
    if not isinstance(header, dict):
        raise InputError(f"{path} is not a valid safetensors file: the header is not a JSON object")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    data_bytes = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = (dtype in SAFETENSORS_ITEM_BYTES and all(isinstance(d, int) and d >= 0 for d in shape)
                  and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_bytes)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{path} is not a valid safetensors file: tensor {name[:80]!r} has a malformed header "
                             f"entry (dtype, shape, offsets within the file's {data_bytes} data bytes)")
        count = 1
        for d in shape:
            count *= d
        if count * SAFETENSORS_ITEM_BYTES[dtype] != end - begin:
            raise InputError(f"{path} is not a valid safetensors file: tensor {name[:80]!r} declares shape "
                             f"{list(shape)} {dtype} but stores {end - begin} bytes")
        out[name] = (dtype, shape)
    return out


def check_state_dict_matches(path: str | Path, expected: Mapping[str, Any]) -> None:
    """Refuse a safetensors file whose tensors differ from ``expected`` (``{name: tensor}``, e.g. a model's
    ``state_dict()`` built on the ``meta`` device) in names, shapes or dtype — read from the header before
    anything is loaded, so a checkpoint config that asks for a model of another size is refused without
    allocating it."""
    from safetensors.torch import _TYPES  # name -> torch dtype (F32 -> torch.float32, ...)

    declared = safetensors_header(path)
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        raise InputError(f"{path}: tensors do not match the model its config.json describes (missing "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}): config.json and the weights are not one checkpoint")
    for name, tensor in expected.items():
        dtype, shape = declared[name]
        if tuple(tensor.shape) != shape:
            raise InputError(f"{path}: tensor {name!r} has shape {list(shape)} but config.json's model needs "
                             f"{list(tensor.shape)}: config.json and the weights are not one checkpoint")
        if _TYPES.get(dtype) != tensor.dtype:
            raise InputError(f"{path}: tensor {name!r} is {dtype} but the model's is {tensor.dtype}: refusing to "
                             "convert weights silently")


def check_finite_tensors(path: str | Path, tensors: Mapping[str, Any]) -> None:
    """Refuse NaN or infinite values in the floating-point tensors of ``tensors`` (torch or numpy)."""
    import numpy as np
    import torch

    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            bad = t.is_floating_point() and not bool(torch.isfinite(t).all())
        else:
            a = np.asarray(t)
            bad = a.dtype.kind == "f" and not bool(np.isfinite(a).all())
        if bad:
            raise InputError(f"{path}: tensor {name!r} contains NaN or infinite values: the file is damaged or "
                             "came from a diverged training run")


def check_hdf5_dataset(ds: Any, where: str, *, max_bytes: int | None = MAX_IN_MEMORY_BYTES) -> None:
    """Refuse an ``h5py.Dataset`` whose declared size is implausible before reading it: more than ``max_bytes``
    (None = no cap; for data read a frame at a time) or more than :data:`MAX_COMPRESSION_RATIO` times the bytes
    the file stores for it (storage never written: a forged or truncated file).  ``where`` names it."""
    declared = int(ds.size) * int(ds.dtype.itemsize)
    if max_bytes is not None and declared > max_bytes:
        raise InputError(f"{where}: declares shape {list(ds.shape)} {ds.dtype} = {declared / 2**30:.1f} GiB, over "
                         f"the {max_bytes / 2**30:.1f} GiB read at once: split the data into smaller segments")
    stored = int(ds.id.get_storage_size())
    if declared > max(stored, 1) * MAX_COMPRESSION_RATIO:
        raise InputError(f"{where}: declares shape {list(ds.shape)} {ds.dtype} ({declared} bytes) but the file "
                         f"stores only {stored} bytes of it: the file is truncated or was not written by a dataset "
                         "writer")


# ------------------------------------------------------------------------------------------------- paths
def confined_file(directory: str | Path, name: str, what: str) -> Path:
    """``directory / name`` when ``name`` is a relative path that stays inside ``directory`` (also after
    resolving symlinks) and names an existing file; else :class:`InputError` (``what`` names the field)."""
    directory = Path(directory)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InputError(f"{directory}: {what} must be a file name, got {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{directory}: {what} {name[:200]!r} points outside the directory (absolute or '..'); "
                         "only files inside it are read")
    path = directory / rel
    try:
        inside = path.resolve().is_relative_to(directory.resolve())
    except OSError:
        inside = False
    if not inside:
        raise InputError(f"{directory}: {what} {name[:200]!r} resolves outside the directory (a symlink)")
    if not path.is_file():
        raise InputError(f"{directory}: {what} {name[:200]!r} does not exist: the directory is incomplete")
    return path


# ------------------------------------------------------------------------------------------------ outputs
def refuse_overwrite(out: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                     option: str = "--out") -> Path:
    """``out`` as a Path, or :class:`InputError` when it is one of ``inputs`` (whatever ``overwrite`` says) or
    exists already and ``overwrite`` is false."""
    out = Path(out).expanduser()
    for given in inputs:
        src = Path(given).expanduser()
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src)):
            raise InputError(f"{option} {out} is the input {given}: choose another output file (an input is never "
                             "overwritten)")
    if out.exists() and not overwrite:
        raise InputError(f"{option} {out} exists: pass --overwrite to replace it, or choose another name")
    return out


_TEMPS: set[Path] = set()
_TEMPS_LOCK = threading.Lock()
_PREVIOUS_SIGTERM: Any = None   # the SIGTERM handler in place before the first temp file was registered


def _remove_temps_on_sigterm(signum, frame) -> None:
    """SIGTERM while temp files are being written: remove them, then do what the previous handler did (exit
    with 128 + 15 when that was the default action)."""
    with _TEMPS_LOCK:
        temps = list(_TEMPS)
    for p in temps:
        _remove(p)
    previous = _PREVIOUS_SIGTERM
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    raise SystemExit(128 + signum)


def _remove(path: Path) -> bool:
    """Remove a file or a directory tree (never following a symlink); True if something was removed."""
    import shutil

    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except OSError:
        return False


def _register_temp(tmp: Path) -> None:
    global _PREVIOUS_SIGTERM
    with _TEMPS_LOCK:
        first = not _TEMPS
        _TEMPS.add(tmp)
    # signal handlers can only be set from the main thread; elsewhere the finally block does the work
    if first and threading.current_thread() is threading.main_thread():
        current = signal.getsignal(signal.SIGTERM)
        if current is not _remove_temps_on_sigterm:
            _PREVIOUS_SIGTERM = current
            signal.signal(signal.SIGTERM, _remove_temps_on_sigterm)


def _unregister_temp(tmp: Path) -> None:
    with _TEMPS_LOCK:
        _TEMPS.discard(tmp)
        last = not _TEMPS
    if last and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is _remove_temps_on_sigterm:
        signal.signal(signal.SIGTERM, _PREVIOUS_SIGTERM if _PREVIOUS_SIGTERM is not None else signal.SIG_DFL)


def temp_name(out: Path, tag: str = "tmp") -> Path:
    """The temp file for ``out``: hidden, next to it (same file system: the rename is atomic), named after the
    writing process (``.<name>.<tag>-<pid>``)."""
    return out.with_name(f".{out.name}.{tag}-{os.getpid()}")


def remove_stale_temps(out: Path, tag: str = "tmp") -> list[Path]:
    """Remove temp files of ``out`` left by writers that no longer run (killed with SIGKILL, power loss); also
    the visible ``<name>.<tag>-<pid>`` files of earlier versions."""
    removed = []
    candidates = [*out.parent.glob(f".{out.name}.{tag}-*"), *out.parent.glob(f"{out.name}.{tag}-*")]
    for p in candidates:
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # that writer still runs
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # another user's live process
        if _remove(p):
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_output(out: str | Path, tag: str = "tmp") -> Iterator[Path]:
    """Yield a temp path next to ``out`` (the caller creates a file or a directory there); on a normal exit
    rename it to ``out``, on any exception (including KeyboardInterrupt) and on SIGTERM remove it.  An existing
    ``out`` (the caller has decided it may be replaced) is replaced only once the new one is complete.  Stale
    temp files of dead writers of ``out`` are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out, tag)
    tmp = temp_name(out, tag)
    _register_temp(tmp)
    try:
        yield tmp
        if tmp.is_dir() and out.exists():  # a directory cannot be replaced in one rename: move the old one aside
            old = temp_name(out, "old")
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)
    finally:
        _remove(tmp)
        _unregister_temp(tmp)
