"""Compiled TVM libraries as artifacts: packed on the machine that compiles (the trainer side),
looked up by target, unpacked and loaded on the edge without compiling.

An artifact is a gzip'd tar of what ``TvmBackend`` caches (``model.so``, ``params.bin``,
``signature.json``) and, when the library was tuned, the MetaSchedule database it was compiled
with (``tuning/*.json``: workloads and tuning records, kept for audit and for recompiling).
Its target id is a digest of the compiler target (with its ``-mcpu``) and the TVM version: an
agent serves an artifact only when its own id matches, since a library built for another CPU can
crash or mis-execute.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import tvm

from detectors.backends.base import BackendError
from detectors.backends.tvm import DEFAULT_CACHE, TvmBackend, host_target

ARTIFACT_FILES = ("model.so", "params.bin", "signature.json")
TUNING_FOLDER = "tuning"


def target_id(target: tvm.target.Target | None = None) -> str:
    """What agents and the compiler agree on: a digest of the target JSON and the TVM version."""
    target = target or host_target()
    return hashlib.sha256(json.dumps({"target": str(target), "tvm": tvm.__version__}, sort_keys=True).encode()).hexdigest()[:16]


def target_from_json(text: str) -> tvm.target.Target:
    """A target from its JSON form (what agents declare); ``host`` for this machine's CPU."""
    if text == "host":
        return host_target()
    try:
        return tvm.target.Target(json.loads(text))
    except Exception as exc:  # json or TVM errors
        raise BackendError(f"not a TVM target: {text[:200]!r} ({exc})") from None


def pack(backend: TvmBackend, tuning_dir: Path | None = None) -> bytes:
    """The backend's compiled library as artifact bytes, with the tuning records it was compiled
    from when ``tuning_dir`` (a MetaSchedule database folder) is given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ARTIFACT_FILES:
            tar.add(backend.artifact_dir / name, arcname=name)
        for record in sorted(tuning_dir.glob("*.json")) if tuning_dir is not None else []:
            tar.add(record, arcname=f"{TUNING_FOLDER}/{record.name}")
    return buffer.getvalue()


def _is_tuning_record(name: str) -> bool:
    folder, _, file = name.partition("/")
    return folder == TUNING_FOLDER and file.endswith(".json") and "/" not in file and not file.startswith(".")


def tuning_records(data: bytes) -> list[str]:
    """The names of the tuning records an artifact carries (empty for an untuned library)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return sorted(m.name for m in tar.getmembers() if _is_tuning_record(m.name))


def load(data: bytes, model_bytes: bytes, threads: int = 0, cache_dir: Path | None = None) -> TvmBackend:
    """Unpack artifact bytes (already verified) into the cache and load them; never compiles."""
    folder = (cache_dir or DEFAULT_CACHE) / f"artifact-{hashlib.sha256(data).hexdigest()[:24]}"
    if not (folder / "signature.json").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            library = {name for name in members if not _is_tuning_record(name)}
            if sorted(library) != sorted(ARTIFACT_FILES) or not all(m.isfile() for m in members.values()):
                raise BackendError(f"not a pedstream TVM artifact: it holds {sorted(members)}")
            (tmp / TUNING_FOLDER).mkdir(exist_ok=True)
            for name in members:  # the library files and tuning/<record>.json only, checked above
                source = tar.extractfile(members[name])
                assert source is not None  # a regular file, checked above
                (tmp / name).write_bytes(source.read())
        try:
            tmp.rename(folder)
        except OSError:  # another process unpacked it first
            pass
    return TvmBackend.from_artifact_dir(model_bytes, folder, threads)
