"""Fetch and unpack a Debian package: ``apt-get download`` (no root needed) and ``dpkg-deb -x`` (or a pure-Python
reader of the ar/tar format when dpkg-deb is absent). Errors say how to provide the data instead.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from tokenset import atomic
from tokenset.data.prepared import DataError

__all__ = ["fetch_deb", "extract_deb", "deb_version"]

def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"could not run {' '.join(cmd)}: {err}") from err


def _how_to_provide(package: str, dest: Path, reason: str) -> str:
    return (
        f"cannot fetch the Debian package {package!r}: {reason}.\n"
        f"To provide the data, either\n"
        f"  * on Debian/Ubuntu: run `sudo apt-get update` once, then retry (we run `apt-get download {package}`, "
        f"which needs no root);\n"
        f"  * or copy {package}_*.deb (from `apt-get download {package}` on any Debian machine, or "
        f"https://packages.debian.org/{package}) into {dest}/ and retry;\n"
        f"  * or use your own images: set data.name: imagefolder and data.root: a folder laid out as "
        f"<root>/train/<class>/*.jpg (see tokenset/data/__init__.py)."
    )


def _lists_lack(stderr: str) -> bool:
    """Whether apt-get failed because its package lists do not know the package (empty or stale lists)."""
    signs = ("Unable to locate package", "has no installation candidate", "Can't select candidate version",
             "No packages found")
    return any(s in stderr for s in signs)


def fetch_deb(package: str, dest: Path) -> Path:
    """The path of ``dest/<package>_*.deb``, downloading it with ``apt-get download`` if it is not there.

    On empty or stale apt lists we run ``apt-get update`` first when we are root, else raise a DataError that says
    what to run. apt-get missing or the package unavailable -> DataError saying how to provide the data.
    """
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if len(found) > 1:
        raise DataError(f"several {package} packages in {dest}: {[p.name for p in found]}; keep one")
    if found:
        return found[0]
    apt = shutil.which("apt-get")
    if apt is None:
        raise DataError(_how_to_provide(package, dest, "apt-get is not on PATH (not a Debian-like system?)"))
    result = _run([apt, "download", package], cwd=dest)
    if result.returncode != 0 and _lists_lack(result.stderr):
        if not _is_root():
            raise DataError(_how_to_provide(
                package, dest, f"apt's package lists do not know it (empty or stale lists; `apt-get update` needs "
                f"root, which we are not): {result.stderr.strip()}"))
        update = _run([apt, "update"])
        if update.returncode != 0:
            raise DataError(_how_to_provide(package, dest, f"`apt-get update` failed: {update.stderr.strip()}"))
        result = _run([apt, "download", package], cwd=dest)
    if result.returncode != 0:
        raise DataError(_how_to_provide(package, dest, f"`apt-get download` failed: {result.stderr.strip()}"))
    found = sorted(dest.glob(f"{package}_*.deb"))
    if len(found) != 1:
        raise DataError(f"`apt-get download {package}` succeeded but left {len(found)} .deb files in {dest}")
    return found[0]


def extract_deb(deb: Path, tree: Path) -> Path:
    """Unpack the files of ``deb`` into ``tree`` (``dpkg-deb -x``; a Python reader of the ar/tar format without
    dpkg-deb). Skipped when ``tree/.source-sha256`` records this deb's checksum. Returns ``tree``."""
    digest = atomic.sha256_file(deb)
    stamp = tree / ".source-sha256"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    dpkg = shutil.which("dpkg-deb")
    if dpkg is not None:
        result = _run([dpkg, "-x", str(deb), str(tree)])
        if result.returncode != 0:
            raise DataError(f"{deb}: dpkg-deb -x failed (corrupt download? delete it and retry): "
                            f"{result.stderr.strip()}")
    else:
        _extract_deb_python(deb, tree)
    atomic.write_text(stamp, digest + "\n")
    return tree


def _extract_deb_python(deb: Path, tree: Path) -> None:
    """A .deb is an ar archive; its member data.tar[.xz|.gz|.bz2] holds the files."""
    modes = {"data.tar": "r:", "data.tar.xz": "r:xz", "data.tar.gz": "r:gz", "data.tar.bz2": "r:bz2"}
    with deb.open("rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise DataError(f"{deb} is not a Debian package (no ar header); delete it and retry")
        while len(header := fh.read(60)) == 60:
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            payload = fh.read(size)
            fh.read(size % 2)
            if name.startswith("data.tar"):
                if name not in modes:
                    raise DataError(f"{deb}: member {name} needs dpkg-deb to unpack (apt-get install dpkg)")
                try:
                    with tarfile.open(fileobj=io.BytesIO(payload), mode=modes[name]) as tar:
                        tar.extractall(tree, filter="data")
                except (tarfile.TarError, OSError, EOFError) as err:
                    raise DataError(f"{deb}: cannot unpack {name} ({err}); delete the file and retry") from err
                return
    raise DataError(f"{deb}: no data.tar member found; delete the file and retry")


def deb_version(deb: Path) -> str:
    """The Version field of the package (from its file name, ``<name>_<version>_<arch>.deb``)."""
    parts = deb.stem.split("_")
    return parts[1].replace("%3a", ":") if len(parts) == 3 else "unknown"
