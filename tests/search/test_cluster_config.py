"""cluster.yaml is a valid Ray cluster launcher config that would do what docs/cluster.md
("Running on a cluster") says: checked against the JSON schema Ray ships and by Ray's
own config preparation (what `ray up` runs before it touches the cloud), plus the promises
the file makes in its comments."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
TOKEN_MOUNT = "~/.ray/auth_token"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _commands(config: dict[str, Any], key: str) -> str:
    return "\n".join(config.get(key) or [])


def test_validates_against_rays_schema(
    config: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def _typo_in_node_type(c: dict[str, Any]) -> None:
    c["available_node_types"]["ray.worker.a10g"]["min_worker"] = 0


def _gpu_count_as_text(c: dict[str, Any]) -> None:
    c["available_node_types"]["ray.worker.a10g"]["resources"]["GPU"] = "one"


def _no_provider(c: dict[str, Any]) -> None:
    del c["provider"]


def _unknown_top_level_key(c: dict[str, Any]) -> None:
    c["setup_command"] = ["echo misspelt"]


@pytest.mark.parametrize(
    "break_it", [_typo_in_node_type, _gpu_count_as_text, _no_provider, _unknown_top_level_key]
)
def test_a_broken_copy_fails_validation(
    config: dict[str, Any], validator: jsonschema.protocols.Validator, break_it: Any
) -> None:
    broken = copy.deepcopy(config)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_ray_prepares_and_validates_it_as_ray_up_would(config: dict[str, Any]) -> None:
    # No cloud call: merges the AWS defaults and runs Ray's checks beyond the schema (head
    # node type exists, worker counts consistent, ...).
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_head_is_cpu_and_gpu_workers_declare_their_gpus(config: dict[str, Any]) -> None:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert config["provider"]["type"] == "aws"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_types = {
        t["node_config"]["InstanceType"]: t["resources"].get("GPU", 0) for t in workers.values()
    }
    assert gpu_types == {"g5.xlarge": 1, "p4d.24xlarge": 8}
    for name, node_type in workers.items():
        assert node_type["resources"]["CPU"] > 0, name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert node_type["max_workers"] <= config["max_workers"], name
        # Trials on workers write to the s3:// storage: they need an instance role.
        assert "IamInstanceProfile" in node_type["node_config"], name


def test_file_mounts_exist_and_carry_the_package(config: dict[str, Any]) -> None:
    mounts: dict[str, str] = config["file_mounts"]
    for remote, local in mounts.items():
        if local.startswith("~"):
            # The one source outside the repository: the user's token, never committed.
            assert (remote, local) == (TOKEN_MOUNT, TOKEN_MOUNT)
            continue
        assert not Path(local).is_absolute(), local
        assert (REPO / local).exists(), f"file_mounts {remote}: {local} is not in the repo"
    package = REPO / mounts["~/hiersearch/hiersearch"]
    assert (package / "cli" / "__main__.py").is_file(), "package not mounted"
    spaces = REPO / mounts["~/hiersearch/search_spaces"]
    assert list(spaces.glob("*.yaml")), "search spaces not mounted"
    assert (REPO / mounts["~/hiersearch/pyproject.toml"]).name == "pyproject.toml"


def test_setup_installs_torch_then_the_mounted_project(config: dict[str, Any]) -> None:
    setup = config["setup_commands"]
    torch = next(i for i, c in enumerate(setup) if re.search(r"pip install .*torch", c))
    project = next(i for i, c in enumerate(setup) if "pip install" in c and "~/hiersearch" in c)
    assert torch < project
    assert re.search(r"pip install .*-e ~/hiersearch\b", setup[project])


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_node_starts_with_token_auth(config: dict[str, Any], key: str) -> None:
    start = _commands(config, key)
    assert "ray start" in start
    assert "RAY_AUTH_MODE=token" in start
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", start)
    assert token_path and token_path.group(1).replace("$HOME", "~") == TOKEN_MOUNT
    assert TOKEN_MOUNT in config["file_mounts"]


def test_header_gives_the_launch_commands() -> None:
    header = CLUSTER_YAML.read_text().split("\ncluster_name:")[0]
    for command in (
        "ray up",
        "ray submit cluster.yaml",
        "ray job submit",
        "ray down",
        "hiersearch leaderboard",
        "ray get-auth-token",
    ):
        assert command in header, command
