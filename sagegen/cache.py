"""The on-disk cubin cache: content-addressed, atomic, and safe across processes.

Layout: ``<root>/<sagegen version>/<arch>/<variant name>-<key16>.cubin`` plus a ``.json`` written last, via a temp
file and rename: the JSON is the commit marker and records the cubin's size and SHA-256, so a truncated or damaged
entry is detected and rebuilt. A per-entry file lock (released by the OS if its holder dies) makes N processes
building one key compile it once.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from . import __version__
from .errors import CacheError
from .toolchain import cache_root, fingerprint, nvrtc_version

LOCK_TIMEOUT_S = 900  # longer than any single compile; a holder that died releases at once


def cache_key(name: str, source: str, options: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for part in (name, source, "\0".join(options), fingerprint()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class KernelCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_root()
        self.base = self.root / __version__

    def _dir(self, arch: str) -> Path:
        d = self.base / arch
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=d, prefix=".probe", delete=True)
            probe.close()
        except OSError as e:
            raise CacheError(
                f"kernel cache directory {d} is not writable ({e.strerror or e}); "
                "set SAGEGEN_CACHE_DIR to a writable folder"
            ) from None
        return d

    def paths(self, arch: str, name: str, key: str) -> tuple[Path, Path]:
        stem = self._dir(arch) / f"{name}-{key[:16]}"
        return stem.with_suffix(".cubin"), stem.with_suffix(".json")

    def load(self, arch: str, name: str, key: str) -> bytes | None:
        """The cached cubin, or None when absent, half-written or damaged."""
        cubin_path, meta_path = self.paths(arch, name, key)
        try:
            meta = json.loads(meta_path.read_text())
            data = cubin_path.read_bytes()
        except (OSError, ValueError):
            return None
        ok = (
            meta.get("key") == key
            and meta.get("size") == len(data)
            and meta.get("sha256") == hashlib.sha256(data).hexdigest()
            and data[:4] == b"\x7fELF"
        )
        return data if ok else None

    def store(self, arch: str, name: str, key: str, data: bytes, extra: dict | None = None) -> Path:
        cubin_path, meta_path = self.paths(arch, name, key)
        atomic_write(cubin_path, data)
        meta = {
            "name": name,
            "arch": arch,
            "key": key,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "sagegen": __version__,
            "nvrtc": nvrtc_version(),
            **(extra or {}),
        }
        atomic_write(meta_path, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
        return cubin_path

    def get_or_build(self, arch: str, name: str, key: str, build: Callable[[], bytes]) -> tuple[bytes, bool]:
        """(cubin, built): load the entry, or build and store it under the entry's lock."""
        data = self.load(arch, name, key)
        if data is not None:
            return data, False
        cubin_path, _ = self.paths(arch, name, key)
        lock = FileLock(str(cubin_path.with_suffix(".lock")), timeout=LOCK_TIMEOUT_S)
        try:
            with lock:
                data = self.load(arch, name, key)  # another process may have built it while we waited
                if data is not None:
                    return data, False
                data = build()
                self.store(arch, name, key, data)
                return data, True
        except Timeout:
            raise CacheError(f"timed out after {LOCK_TIMEOUT_S} s waiting for the lock on {cubin_path}") from None

    def size_bytes(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def clear(self) -> int:
        """Remove every cached entry (all sagegen versions). Returns the number of files removed."""
        import shutil

        n = sum(1 for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0
        for child in self.root.iterdir() if self.root.is_dir() else []:
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        return n


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, rename: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
