"""The kernels of a sweep: what the user named, resolved to bootable images.

An input is one of

- a directory of an unpacked kernel package (``DIR/boot/vmlinuz-R`` beside
  ``DIR/lib/modules/R``, as ``dpkg-deb -x`` leaves it);
- a kernel image file (``.../vmlinuz-R`` or a bzImage);
- a ``.deb`` file, unpacked into the cache;
- a Debian package name (``linux-image-6.1.0-50-amd64-unsigned``), fetched
  with ``apt-get download`` and unpacked into the cache.

Kernels are sorted by version: the package's upstream version when the image
comes from a package (``6.1.0-47-amd64`` is Linux 6.1.170), else the release.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmharness.exitcodes import UsageError

log = logging.getLogger(__name__)

#: what a Debian package name looks like (policy: lowercase, digits, + - .)
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


@dataclass(frozen=True)
class Kernel:
    """One column of the sweep."""

    image: Path
    release: str
    version: str | None = None
    """the upstream version of the package it came from (``6.1.170``), when known"""
    source: str = ""
    """what the user named (a path or a package name)"""

    @property
    def label(self) -> str:
        """The column's name: the release, with the upstream version when it says more."""
        short = self.release.removesuffix("-amd64")
        if self.version and not short.startswith(self.version):
            return f"{short} ({self.version})"
        return short

    def sort_key(self) -> tuple[object, ...]:
        return (version_key(self.version or self.release), version_key(self.release))


def version_key(text: str) -> tuple[tuple[float, int, str], ...]:
    """A key that orders version strings as people read them: runs of digits
    compare as numbers (6.1.0-9 < 6.1.0-47 < 6.12.118), the rest as text,
    and a pre-release ``~`` sorts before the release (Debian's rule)."""
    key: list[tuple[float, int, str]] = []
    for digits, other in re.findall(r"(\d+)|(\D+)", text):
        if digits:
            key.append((1, int(digits), ""))
        else:
            key.append((0 if other.startswith("~") else 2, 0, other))
    key.append((1 / 2, 0, ""))  # the end: after a '~' part, before any other part
    return tuple(key)


def image_release(image: Path) -> str:
    """``uname -r`` of an x86 bzImage, read from its setup header by
    bisect-kernel's own reader (one parser of the header), its refusal as the
    sweep's bad input."""
    from kvmharness.tools import bisect_kernel

    try:
        return bisect_kernel.kernel_release(image)
    except bisect_kernel.UsageError as exc:
        raise UsageError(str(exc)) from exc


def package_version(root: Path) -> str | None:
    """The upstream version of the kernel package unpacked at ``root``, from its
    Debian changelog (``linux (6.1.170-3) ...``: ``6.1.170``)."""
    for changelog in sorted(root.glob("usr/share/doc/*/changelog.Debian.gz")):
        try:
            with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as f:
                first = f.readline()
        except OSError:
            continue
        m = re.match(r"^\S+ \(([^)]+)\)", first)
        if m:
            return re.sub(r"-[^-]*$", "", m.group(1))  # drop the Debian revision
    return None


def from_directory(d: Path, source: str = "") -> Kernel:
    images = sorted((d / "boot").glob("vmlinuz-*"))
    if not images:
        raise UsageError(f"{d}: no boot/vmlinuz-* in it (an unpacked kernel package?)")
    if len(images) > 1:
        raise UsageError(f"{d}: several kernels in boot/ ({', '.join(p.name for p in images)})")
    return from_image(images[0], source or str(d), root=d)


def from_image(image: Path, source: str = "", root: Path | None = None) -> Kernel:
    release = image_release(image)
    if root is None and image.parent.name == "boot":
        root = image.parent.parent
    version = package_version(root) if root is not None else None
    return Kernel(image=image.resolve(), release=release, version=version, source=source)


def unpack_deb(deb: Path, cache: Path) -> Path:
    """``dpkg-deb -x`` ``deb`` into ``cache/images/NAME`` (once: an unpacked
    tree is reused), atomically (unpacked beside, then renamed)."""
    dest = cache / "images" / deb.name.removesuffix(".deb")
    if (dest / "boot").is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        r = subprocess.run(
            ["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True, check=False
        )
        if r.returncode != 0:
            raise UsageError(f"{deb}: dpkg-deb -x failed: {r.stderr.strip()[-200:]}")
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_package(name: str, cache: Path) -> Path:
    """``apt-get download NAME`` into ``cache/debs`` (once) and unpack it."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    have = sorted(debs.glob(f"{name}_*.deb"))
    if not have:
        if shutil.which("apt-get") is None:
            raise UsageError(f"{name}: not a file or directory, and no apt-get to fetch it")
        log.info("fetching %s with apt-get download", name)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=debs) as tmp:
            r = subprocess.run(
                ["apt-get", "download", name],
                cwd=tmp,
                capture_output=True,
                text=True,
                check=False,
            )
            got = sorted(Path(tmp).glob("*.deb"))
            if r.returncode != 0 or not got:
                why = (r.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
                raise UsageError(f"{name}: apt-get download failed: {why}")
            for g in got:
                os.replace(g, debs / g.name)
        have = sorted(debs.glob(f"{name}_*.deb"))
    return unpack_deb(have[-1], cache)


def resolve(item: str, cache: Path) -> Kernel:
    """One input of the sweep, as a :class:`Kernel` (fetching/unpacking as needed)."""
    p = Path(item)
    if p.is_dir():
        return from_directory(p, item)
    if p.is_file():
        if p.suffix == ".deb":
            return from_directory(unpack_deb(p, cache), item)
        return from_image(p, item)
    if "/" not in item and PACKAGE_NAME.match(item):
        return from_directory(fetch_package(item, cache), item)
    raise UsageError(f"{item}: no such file or directory, and not a Debian package name")


def resolve_all(items: list[str], cache: Path) -> list[Kernel]:
    """Every input, resolved, sorted by version, the same release named twice once."""
    if not items:
        raise UsageError("name at least one kernel (a directory, an image, a .deb or a package)")
    kernels: dict[str, Kernel] = {}
    for item in items:
        k = resolve(item, cache)
        kernels.setdefault(k.release, k)
    return sorted(kernels.values(), key=Kernel.sort_key)


def image_digest(image: Path) -> str:
    """The first 16 hex digits of the image's SHA-256: a result is cached per image."""
    h = hashlib.sha256()
    with open(image, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
