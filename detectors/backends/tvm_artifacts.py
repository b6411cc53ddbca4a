"""Compiled TVM libraries as artifacts: packed on the machine that compiles (the trainer side),
looked up by target, unpacked and loaded on the edge without compiling.

An artifact is a gzip'd tar of what ``TvmBackend`` caches (``model.so``, ``params.bin``,
``signature.json``). Its target id is a digest of the compiler target (with its ``-mcpu``) and
the TVM version: an agent serves an artifact only when its own id matches, since a library built
for another CPU can crash or mis-execute.
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


def pack(backend: TvmBackend) -> bytes:
    """The backend's compiled library as artifact bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ARTIFACT_FILES:
            tar.add(backend.artifact_dir / name, arcname=name)
    return buffer.getvalue()


def load(data: bytes, model_bytes: bytes, threads: int = 0, cache_dir: Path | None = None) -> TvmBackend:
    """Unpack artifact bytes (already verified) into the cache and load them; never compiles."""
    folder = (cache_dir or DEFAULT_CACHE) / f"artifact-{hashlib.sha256(data).hexdigest()[:24]}"
    if not (folder / "signature.json").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if sorted(members) != sorted(ARTIFACT_FILES) or not all(m.isfile() for m in members.values()):
                raise BackendError(f"not a pedstream TVM artifact: it holds {sorted(members)}")
            for name in ARTIFACT_FILES:
                source = tar.extractfile(members[name])
                assert source is not None  # a regular file, checked above
                (tmp / name).write_bytes(source.read())
        try:
            tmp.rename(folder)
        except OSError:  # another process unpacked it first
            pass
    return TvmBackend.from_artifact_dir(model_bytes, folder, threads)
