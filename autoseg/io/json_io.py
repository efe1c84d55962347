"""Readable JSON artefacts: dataclasses to indented JSON and back, written atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import errno
import os
import re
import socket
import tempfile
import time
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

import numpy as np

from autoseg.errors import AutosegError

T = TypeVar("T")


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def publish(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished temp file into place with normal permissions.

    ``tempfile.mkstemp`` creates files readable by their owner only; outputs should be as
    readable as any other file the user writes (0666 minus the umask).
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temp file name beside ``path``; on success it is renamed to ``path``, on error removed.

    ``suffix`` matters to writers that pick the format from the name (SimpleITK, ``np.save``).
    Readers never see a half-written ``path``, and an existing ``path`` survives a failed write.
    The temp name ``.<name>.<host>-<pid>-<random><suffix>`` records the writing process, so
    :func:`remove_stale_temps` can tell a killed writer's leftovers from a live writer's file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_TEMP = re.compile(r"^\..+\.(?:(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp(?:\.[A-Za-z0-9]+)*$")
UNOWNED_TEMP_AGE_S = 3600.0


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _owner() -> str:
    """``<host>-<pid>`` of this process, as written into temp names."""
    return f"{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temps(folder: Path | str) -> list[Path]:
    """Delete the temp files :func:`atomic_path` left in ``folder`` when its writer was killed.

    A temp written on this machine is stale when the process named in it no longer runs; a temp
    written on another machine (a shared folder) or without an owner (older autoseg) only when
    it is over :data:`UNOWNED_TEMP_AGE_S` old. Temps of live writers (a parallel ``--part-id``
    run into the same folder, here or on another machine) are kept. Call it when a writer starts
    on its output folder. Returns the removed paths; a folder that does not exist is fine.

    Edge case: a pid reused by an unrelated process keeps its temp until that process ends.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m is None or not p.is_file():
            continue
        try:
            if m["pid"] and m["host"] == _host():
                stale = not _alive(int(m["pid"]))
            else:
                stale = time.time() - p.stat().st_mtime > UNOWNED_TEMP_AGE_S
            if stale:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:
            continue  # its writer renamed or removed it meanwhile
    return removed


WRITE_ERRNOS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


def write_error(e: OSError, folder: Path | str, fix: str) -> AutosegError | None:
    """One line for a failed write into ``folder`` (disk full, read-only, no permission), else None.

    ``fix`` names the setting that moves the output elsewhere (e.g. ``-o`` or ``AUTOSEG_RESULTS``).
    """
    why = WRITE_ERRNOS.get(e.errno or 0)
    if why is None:
        return None
    where = Path(e.filename) if e.filename else Path(folder)
    if _TEMP.match(where.name):  # name the file being written, not its temp
        where = where.parent
    free = "free space there" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return AutosegError(f"{where}: cannot write ({why}, [Errno {e.errno}]); {free} or {fix}, then run again "
                        "(finished files are kept, nothing half-written is left)")


def check_writable(folder: Path | str, fix: str) -> None:
    """Create ``folder`` and a probe file in it; AutosegError (one line, see :func:`write_error`) if that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".autoseg_write_probe.{_owner()}-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        err = write_error(e, folder, fix)
        if err is None:
            raise
        raise err from None


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def save_json(obj: Any, path: Path | str) -> None:
    """Indented JSON (dataclasses and numpy scalars allowed), written atomically."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    text = json.dumps(obj, indent=2, default=_default, allow_nan=True)
    atomic_write_bytes(path, (text + "\n").encode())


def load_json(path: Path | str) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise AutosegError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise AutosegError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix or delete it") from None


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(tp):
        return dataclass_from_dict(tp, value)
    if origin in (list, tuple) and args:
        return [_convert(args[0], v) for v in value]
    if origin is dict and len(args) == 2:
        return {k: _convert(args[1], v) for k, v in value.items()}
    return value


def dataclass_from_dict(cls: type[T], data: dict) -> T:
    """Build dataclass ``cls`` from a dict made by :func:`dataclasses.asdict` (nested ok).

    Unknown keys are ignored so older readers accept newer files; missing keys with
    defaults take their default.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**kwargs)


def load_dataclass(cls: type[T], path: Path | str) -> T:
    data = load_json(path)
    try:
        return dataclass_from_dict(cls, data)
    except TypeError as e:
        raise AutosegError(f"{path}: missing or wrong fields for {cls.__name__} ({e}); re-create it") from None
