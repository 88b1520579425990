"""The one output-folder policy every writing command follows: never lose a user's files.

An output folder may be (a) new, (b) empty, or (c) the same command's own earlier output,
recognised by the marker file :data:`MARKER` the tool writes into everything it creates (older
folders are recognised by their own metadata, see :func:`output_owner`). Case (c) is replaced
only with ``--overwrite`` (or continued with ``--resume``). An output is never an input of the
same command (paths are resolved and compared for containment both ways), never the current
folder, never another command's folder (a model, a tasks folder) and never a folder with
content the tool did not write. All of this is checked before any expensive work starts, and
permission or path-type problems are one-line user errors instead of tracebacks.

Training runs store a *fingerprint* (inputs + settings) in the marker, so ``--resume`` continues
only the same run; :func:`check_fingerprint` names what differs.

A model folder's ``README.md`` (its model card, :mod:`cellduality.models.card`) is a file the tool
wrote, like ``cellduality.json``: ``sft`` and ``grpo`` write it with the model. It is the one file
of an *input* CellDuality changes: ``evaluate`` rewrites the card's evaluation section (between
its markers, atomically), never a card without them and never anything else in the model folder.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cellduality.errors import CellDualityError

MARKER = ".cellduality-output.json"
"""Written into every output folder; names the command that wrote it (and a run fingerprint)."""
LOCK = ".cellduality-lock"
"""Held (``pid``) by a resumable run while it writes its folder: a second run into the same folder
is refused with one line instead of both writing the same stage files."""


# --------------------------------------------------------------------------------------------
# Who wrote a folder
# --------------------------------------------------------------------------------------------


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of ``folder`` (``None`` when it has none or it is unreadable)."""
    return _json(Path(folder) / MARKER)


def output_owner(folder: str | os.PathLike[str]) -> str | None:
    """The command that wrote ``folder`` (``"sentences"``, ``"sft"``, ...), or ``None``.

    Folders written before markers existed are recognised by their own metadata: a sentences
    folder or a model by ``cellduality.json``, a tasks folder by ``tasks.json``.
    """
    path = Path(folder)
    marker = read_marker(path)
    if marker and marker.get("command"):
        return str(marker["command"])
    info = _json(path / "cellduality.json") or {}
    fmt = str(info.get("format", ""))
    if fmt.startswith("cellduality.sentences/"):
        return "sentences"
    stage = str(info.get("stage", ""))
    if stage:
        return "sft" if stage == "sft" else "grpo" if stage.startswith("grpo") else stage
    if str((_json(path / "tasks.json") or {}).get("format", "")).startswith("cellduality.tasks/"):
        return "teach" if (path / "teach_report.json").is_file() else "tasks build"
    if (path / "summary.json").is_file() and (path / "data").is_dir():
        return "quickstart"
    if (path / "table.json").is_file() and (path / "tables").is_dir():
        return "benchmark"
    return None


def write_marker(folder: str | os.PathLike[str], command: str, **extra: Any) -> None:
    """Write (atomically) the marker that says ``command`` wrote ``folder``."""
    from cellduality import __version__

    path = Path(folder)
    data = {"command": command, "version": __version__,
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path / MARKER)


# --------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_writable_parent(out: str | os.PathLike[str], what: str = "output") -> None:
    """One-line error when ``out`` cannot be created: a file on the way, or no write permission."""
    target = _resolved(out)
    probe = target.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CellDualityError(f"Cannot create {what} {out}: {probe} is a file, not a folder; choose another path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CellDualityError(f"Cannot write {what} {out}: no write permission in {probe}; choose a writable folder.")


def _check_not_input(out: Path, shown: str, inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    for item in inputs:
        if item is None or str(item) == "":
            continue
        inp = _resolved(item)
        if _inside(inp, out) or _inside(out, inp):
            relation = "is" if inp == out else "contains" if _inside(inp, out) else "is inside"
            raise CellDualityError(
                f"Output {shown} {relation} the input {item}; the output must be a separate new folder "
                "(inputs are never modified)."
            )


def check_output_dir(
    out: str | os.PathLike[str],
    command: str,
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Apply the output policy to folder ``out`` for ``command``; return its resolved path.

    ``resume=True`` accepts the command's own earlier output as is (it will be continued);
    ``overwrite=True`` accepts it for replacement. Anything else that is not new or empty is
    refused with one line saying why and what to do.
    """
    path = _resolved(out)
    if path.exists() and not path.is_dir():
        raise CellDualityError(f"Output {out} is an existing file, not a folder; choose a folder path.")
    cwd = _resolved(Path.cwd())
    if _inside(cwd, path):
        raise CellDualityError(
            f"Output {out} is the current folder (or one above it); choose a new subfolder such as ./{command.split()[0]}_out."
        )
    _check_not_input(path, str(out), inputs)
    check_writable_parent(path, "output folder")
    if not path.exists():
        return path
    try:
        empty = not has_content(path)
    except PermissionError:
        raise CellDualityError(f"Cannot read output folder {out} (permission denied); choose another folder.") from None
    if empty:
        if not os.access(path, os.W_OK | os.X_OK):
            raise CellDualityError(f"Cannot write into {out}: no write permission; choose a writable folder.")
        return path
    owner = output_owner(path)
    if owner is None:
        raise CellDualityError(
            f"Output {out} already holds files CellDuality did not write; choose a new or empty folder "
            "(nothing there was changed)."
        )
    if owner != command:
        raise CellDualityError(
            f"Output {out} holds the output of `cellduality {owner}`, not of `cellduality {command}`; "
            "choose a new folder (nothing there was changed)."
        )
    foreign = foreign_entries(path)
    if foreign:
        raise CellDualityError(
            f"Output {out} holds {', '.join(foreign[:3])} which `cellduality {command}` did not write there; "
            "move it out or choose a new folder (nothing was changed)."
        )
    if not (overwrite or resume):
        hint = "pass --overwrite to replace it" if command not in ("sft", "grpo", "adapt") else "pass --resume to continue it"
        raise CellDualityError(
            f"Output {out} already holds an earlier `cellduality {command}` output; {hint}, or choose a new folder."
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise CellDualityError(f"Cannot write into {out}: no write permission; choose a writable folder.")
    return path


def claim_resumable_dir(out: str | os.PathLike[str], command: str, *,
                        inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """For commands that resume by re-running into the same folder (quickstart, benchmark): check and mark it."""
    path = check_output_dir(out, command, inputs=inputs, resume=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock_run(path, command)
        if read_marker(path) is None:
            write_marker(path, command)
    except OSError as exc:
        raise _os_error(exc, path) from None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def lock_run(folder: Path, command: str) -> None:
    """Take ``folder``'s :data:`LOCK` for this process (released at exit); refuse when a live run holds it.

    A lock left by a run that died (its process is gone) is taken over: ``--resume``-style re-runs
    after a crash or Ctrl-C must keep working.
    """
    import atexit

    lock = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _alive(holder):
                raise CellDualityError(
                    f"Output {folder} is being written by another `cellduality {command}` run (process {holder}); "
                    "wait for it to finish or choose another folder.") from None
            lock.unlink(missing_ok=True)  # stale: its run is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        atexit.register(lambda: lock.unlink(missing_ok=True) if lock.is_file() and
                        lock.read_text().strip() == str(os.getpid()) else None)
        return
    raise CellDualityError(f"Could not lock output {folder}; another run keeps claiming it. Choose another folder.")


def check_output_file(out: str | os.PathLike[str], *, suffix: str, inputs: Iterable[str | os.PathLike[str] | None] = (),
                      overwrite: bool = False) -> Path:
    """The policy for a single output file (e.g. ``annotate --out cells.h5ad``)."""
    path = _resolved(out)
    if suffix and path.suffix != suffix:
        raise CellDualityError(f"--out {out} must end in {suffix}.")
    if path.is_dir():
        raise CellDualityError(f"--out {out} is a folder; pass a file path ending in {suffix}.")
    for item in inputs:
        if item is not None and _resolved(item) == path:
            raise CellDualityError(f"--out {out} is the input file; write to a new file (inputs are never modified).")
        if item is not None and _inside(path, _resolved(item)):
            raise CellDualityError(f"--out {out} is inside the input folder {item}; write it elsewhere.")
    check_writable_parent(path, "output file")
    if path.exists() and not overwrite:
        raise CellDualityError(f"--out {out} already exists; pass --overwrite to replace it, or choose a new file name.")
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise CellDualityError(f"Cannot replace {out}: no write permission in {path.parent}.")
    return path


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _os_error(exc: OSError, path: Path) -> CellDualityError:
    reason = exc.strerror or type(exc).__name__
    return CellDualityError(f"Cannot write {path}: {reason}; check free disk space and permissions, or choose another folder.")


@contextmanager
def atomic_dir(out: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Write a folder all-or-nothing: fill the yielded temporary sibling, it replaces ``out`` on success.

    The temporary folder sits beside ``out`` (same filesystem, so the final rename is atomic)
    and is removed if the block raises or is interrupted. A non-empty ``out`` is replaced only
    when it is ``command``'s own earlier output (its marker says so); anything else is refused
    -- this is the last line of defence behind :func:`check_output_dir`. The previous folder is
    moved aside first and deleted only after the new one is in place.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CellDualityError(f"Output {out} is an existing file, not a folder; choose a folder path.")
    _refuse_foreign(out, command)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise _os_error(exc, out) from None
    try:
        yield tmp
        replace_dir(tmp, out, command)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def has_content(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides our marker (a folder with only the marker counts as empty)."""
    return folder.is_dir() and any(p.name not in (MARKER, LOCK) for p in folder.iterdir())


def foreign_entries(folder: Path) -> list[str]:
    """Top-level entries of ``folder`` that are not in its marker's list of written files."""
    marker = read_marker(folder) or {}
    if "files" not in marker:
        return []
    return sorted({p.name for p in folder.iterdir()} - set(marker["files"]) - {MARKER, LOCK, ".stage_done.json"})


def _refuse_foreign(out: Path, command: str) -> None:
    if has_content(out) and (output_owner(out) != command or foreign_entries(out)):
        raise CellDualityError(
            f"Refusing to replace {out}: it holds files `cellduality {command}` did not write; choose a new folder."
        )


def replace_dir(tmp: Path, out: Path, command: str) -> None:
    """Mark the finished folder ``tmp`` as ``command``'s and rename it to ``out``.

    A previous ``out`` (already checked to be ``command``'s own or empty) is moved aside first and
    deleted only once the new folder is in place, so a crash never leaves neither.
    """
    _refuse_foreign(out, command)
    try:
        write_marker(tmp, command, files=sorted(p.name for p in tmp.iterdir()))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
    except OSError as exc:
        raise _os_error(exc, out) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Resume fingerprints
# --------------------------------------------------------------------------------------------


def file_digest(*paths: str | os.PathLike[str]) -> str:
    """A short digest of small files (metadata, not weights): changes when an input folder was rebuilt."""
    h = hashlib.sha256()
    for p in paths:
        path = Path(p)
        h.update(str(path.name).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def folder_digest(folder: str | os.PathLike[str], names: Iterable[str] = ()) -> str:
    """Digest of the JSON metadata files of an input folder (HF ``state.json`` carries data fingerprints)."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*.json") if MARKER not in p.name and "checkpoint" not in str(p)) \
        if root.is_dir() else []
    return file_digest(*files, *(root / n for n in names))


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> str:
    """``"max_steps 10 -> 20, sft_data /a -> /b"``: the keys where two fingerprints differ."""
    a, b = _flat(json.loads(json.dumps(old, default=str))), _flat(json.loads(json.dumps(new, default=str)))
    diffs = [f"{k} {a.get(k, '(unset)')!s:.40} -> {b.get(k, '(unset)')!s:.40}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = ", ".join(diffs[:limit])
    return shown + (f" (+{len(diffs) - limit} more)" if len(diffs) > limit else "")


def check_fingerprint(out: str | os.PathLike[str], fingerprint: Mapping[str, Any], resume: bool) -> None:
    """On ``resume``, refuse a run folder whose stored fingerprint differs (naming what differs)."""
    old = (read_marker(out) or {}).get("fingerprint")
    new = json.loads(json.dumps(fingerprint, default=str))
    if resume and old is not None and old != new:
        raise CellDualityError(
            f"--resume: {out} is a run with other inputs or settings ({describe_differences(old, new)}); "
            "re-run with the original ones, or choose a new output folder for a new run."
        )


def record_fingerprint(out: str | os.PathLike[str], fingerprint: Mapping[str, Any], command: str) -> None:
    """Mark ``out`` as ``command``'s run with this fingerprint (once the run is about to start)."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_marker(path, command, fingerprint=json.loads(json.dumps(fingerprint, default=str)))
    except OSError as exc:
        raise _os_error(exc, path) from None


def run_fingerprint(inputs: Mapping[str, str | os.PathLike[str]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a training run: its input folders (path and metadata digest) and settings."""
    return {"inputs": {k: {"path": str(_resolved(v)), "digest": folder_digest(v)} for k, v in inputs.items()},
            "settings": dict(settings)}
