"""Make the CPU image's base (Debian bookworm with Python 3.11) locally, for hosts with no image registry.

docker/Dockerfile builds FROM ``python:3.11-slim-bookworm``. Where no registry is reachable, the same
Debian release with its own Python 3.11 is made from Debian's package archive with debootstrap and
imported into podman's local storage; ``--build-arg PYTHON_IMAGE=<printed name>`` then points the
Dockerfile at it (docker/README.md has the full commands). The Dockerfile needs only ``python`` with
``venv`` (build stage) and apt, groupadd/useradd (runtime stage), which minbase + these packages give.

The root filesystem is kept as a tar under ~/.cache/protembed/container-base/, named by a hash of the
recipe below, so debootstrap (~2 minutes) runs once per machine and recipe; the image is imported from
that tar only when podman's storage lacks it. Needs root (debootstrap), debootstrap and podman.

    sudo python3 docker/base_image.py            # prints e.g. localhost/protembed-base:bookworm-1a2b3c4d5e6f
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    """Everything that shapes the root filesystem and image config: a changed recipe is a new cache key."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    variant: str = "minbase"
    # python-is-python3: the Dockerfile runs `python`, as in the python:* images; ca-certificates: they
    # carry it too, and pip in the build needs it for TLS.
    include: tuple[str, ...] = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
    # Package caches and index files are dropped, as in Debian's own container images: an image build
    # runs `apt-get update` first anyway.
    drop: tuple[str, ...] = ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*")
    # Image config the python:* images set and an imported tar lacks.
    changes: tuple[str, ...] = (
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["python3"]',
    )

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


RECIPE = Recipe()
REPOSITORY = "localhost/protembed-base"


class BaseImageError(RuntimeError):
    """The base could not be made (tool missing, not root, debootstrap or import failed)."""


def image_name(recipe: Recipe = RECIPE) -> str:
    return f"{REPOSITORY}:{recipe.suite}-{recipe.key}"


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "protembed" / "container-base"


def _run(command: list[str], what: str, timeout_s: float) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        raise BaseImageError(f"{what}: no result after {timeout_s:.0f} s") from error
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise BaseImageError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(tail))


def rootfs_tar(cache_dir: Path, recipe: Recipe = RECIPE, timeout_s: float = 1200) -> Path:
    """The cached root filesystem tar for ``recipe``, made with debootstrap if it is not there yet."""
    for tool in ("debootstrap", "tar"):
        if shutil.which(tool) is None:
            raise BaseImageError(f"{tool} not found (Debian: apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise BaseImageError("debootstrap needs root (run as root or with sudo)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"debian-python-{recipe.suite}-{recipe.key}.tar"
    # Two test sessions at once make it once: the second waits on the lock, then finds the tar.
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="rootfs-") as work:
            rootfs = Path(work) / "rootfs"
            _run(
                [
                    "debootstrap",
                    f"--variant={recipe.variant}",
                    "--include=" + ",".join(recipe.include),
                    recipe.suite,
                    str(rootfs),
                    recipe.mirror,
                ],
                f"debootstrap {recipe.suite} from {recipe.mirror}",
                timeout_s,
            )
            for pattern in recipe.drop:
                for path in rootfs.glob(pattern):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            partial = Path(work) / "rootfs.tar"
            _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], "tar", timeout_s)
            partial.rename(target)  # same folder: atomic, so a tar that exists is complete
    return target


def import_image(tar: Path, name: str, engine: str = "podman", recipe: Recipe = RECIPE) -> str:
    """Import ``tar`` as ``name`` unless the engine's storage has it already; returns ``name``."""
    if shutil.which(engine) is None:
        raise BaseImageError(f"{engine} not found (Debian: apt-get install podman buildah)")
    if subprocess.run([engine, "image", "exists", name], capture_output=True, timeout=60).returncode == 0:
        return name
    changes = [arg for change in recipe.changes for arg in ("--change", change)]
    _run([engine, "import", *changes, str(tar), name], f"{engine} import {tar}", 600)
    return name


def ensure_base_image(cache_dir: Path | None = None, engine: str = "podman") -> str:
    """Make (or reuse) the base and return its image name for ``--build-arg PYTHON_IMAGE=``."""
    tar = rootfs_tar(cache_dir or default_cache_dir())
    return import_image(tar, image_name(), engine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: ~/.cache/protembed/container-base"
    )
    parser.add_argument("--engine", default="podman", help="container engine to import into (podman)")
    args = parser.parse_args(argv)
    try:
        print(ensure_base_image(args.cache_dir, args.engine))
    except BaseImageError as error:
        print(f"base_image: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
