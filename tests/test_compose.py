"""compose.yaml and the Dockerfile: what an operator relies on, checked without a Docker engine."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
COMPOSE_HEADING = "## Running with Docker Compose"

ZAPSTREAM_SERVICES = ("serve", "work", "project")
# Long-running commands of the contract's `zapstream` console script.
CONTRACT_SUBCOMMANDS = {"serve", "work", "project", "run"}
ROOT_USERS = {"root", "0"}


# --- helpers ---------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def as_words(value: str | list[Any]) -> list[str]:
    """A command or healthcheck test, string or list form, as a list of words."""
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume or host path, from the short or the long syntax."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found[volume["target"]] = volume.get("source", "")
        else:
            source, _, rest = volume.partition(":")
            found[rest.split(":")[0]] = source
    return found


def mount_source(service: dict[str, Any], target: str) -> str | None:
    """The source of what is mounted on `target`, None if nothing is."""
    return mounts(service).get(target)


def is_named_volume(source: str | None) -> bool:
    declared = load_compose().get("volumes") or {}
    return source is not None and "/" not in source and source in declared


def option_value(words: list[str], option: str) -> str | None:
    for i, word in enumerate(words):
        if word == option and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def compose_services_named_in(path: Path) -> list[str]:
    """Service names (first backticked word of each row) of the table under COMPOSE_HEADING."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == COMPOSE_HEADING)
    except StopIteration:
        return []
    names = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if not line.lstrip().startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([^`]+)`", cells[0])
        if match:  # the header row and the --- row have no backticked name
            names.append(match.group(1))
    return names


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def final_stage_value(instruction: str) -> str | None:
    values = [args for name, args in dockerfile_stages()[-1] if name == instruction]
    return values[-1] if values else None


# --- README --------------------------------------------------------------------------------


def test_readme_compose_table_names_exactly_the_services() -> None:
    """README's compose table lists every service of compose.yaml, and no other."""
    named = compose_services_named_in(README)
    assert named, f"README.md has no table under {COMPOSE_HEADING!r}"
    assert sorted(named) == sorted(services())


# --- compose.yaml ----------------------------------------------------------------------------


def test_compose_spec_has_no_version_key() -> None:
    """The Compose spec dropped `version:`; Compose warns when it is present."""
    assert "version" not in load_compose()


@pytest.mark.parametrize("name", ["redis", "postgres", *ZAPSTREAM_SERVICES])
def test_service_has_a_healthcheck(name: str) -> None:
    """Every service has an enabled healthcheck with a test, for depends_on and for `ps`."""
    healthcheck = services()[name].get("healthcheck") or {}
    assert not healthcheck.get("disable", False)
    test = as_words(healthcheck.get("test") or [])
    assert test and test[0] in ("CMD", "CMD-SHELL"), test
    assert len(test) > 1


def test_redis_fsyncs_every_append_and_never_evicts() -> None:
    """Redis runs AOF with appendfsync always and noeviction: a 200 means the event is on disk."""
    redis = services()["redis"]
    command = " ".join(as_words(redis["command"]))
    for flag in ("--appendonly yes", "--appendfsync always", "--maxmemory-policy noeviction"):
        assert flag in command, f"redis command lacks {flag!r}: {command}"
    assert "redis-cli ping" in " ".join(as_words(redis["healthcheck"]["test"]))


@pytest.mark.parametrize(
    ("name", "target"),
    [("redis", "/data"), ("postgres", "/var/lib/postgresql/data"), ("project", "/app/data")],
)
def test_state_lives_on_a_named_volume(name: str, target: str) -> None:
    """Data directories are on declared named volumes, so they outlive the containers."""
    source = mount_source(services()[name], target)
    assert is_named_volume(source), f"{name}:{target} is mounted from {source!r}"


def test_project_duckdb_is_on_its_volume() -> None:
    """DUCKDB_PATH of project points into its named volume."""
    project = services()["project"]
    path = env_of(project)["DUCKDB_PATH"]
    on_volumes = [target for target, source in mounts(project).items() if is_named_volume(source)]
    assert any(path.startswith(target.rstrip("/") + "/") for target in on_volumes), path


def test_postgres_database_matches_database_url() -> None:
    """The zapstream services' DATABASE_URL names the database postgres creates."""
    db = env_of(services()["postgres"])["POSTGRES_DB"]
    for name in ZAPSTREAM_SERVICES:
        url = env_of(services()[name])["DATABASE_URL"]
        assert url.startswith("postgresql://") and "@postgres:5432/" in url, url
        assert url.rsplit("/", 1)[1] == db


def test_zapstream_services_share_one_image() -> None:
    """serve, work and project are built from the one Dockerfile into one image."""
    chosen = [(services()[n].get("build"), services()[n].get("image")) for n in ZAPSTREAM_SERVICES]
    assert len({json.dumps(pair, sort_keys=True) for pair in chosen}) == 1, chosen
    build, _ = chosen[0]
    assert build, "the zapstream services must be built from the Dockerfile"
    if isinstance(build, str):
        build = {"context": build}
    dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    assert dockerfile.resolve() == DOCKERFILE


@pytest.mark.parametrize("name", ZAPSTREAM_SERVICES)
def test_zapstream_service_runs_as_the_image_user(name: str) -> None:
    """No zapstream service overrides the image's non-root user with root."""
    user = str(services()[name].get("user", "")).split(":")[0]
    assert user not in ROOT_USERS


@pytest.mark.parametrize("name", ZAPSTREAM_SERVICES)
def test_command_is_the_contract_subcommand_of_its_name(name: str) -> None:
    """Each zapstream service runs the `zapstream` subcommand it is named after."""
    command = as_words(services()[name]["command"])
    assert command[0] in CONTRACT_SUBCOMMANDS
    assert command[0] == name


@pytest.mark.parametrize(
    ("name", "option"),
    [("serve", "--port"), ("work", "--metrics-port"), ("project", "--metrics-port")],
)
def test_healthcheck_gets_ready_on_the_port_of_the_command(name: str, option: str) -> None:
    """The healthcheck GETs /ready on the very port the service's command listens on."""
    service = services()[name]
    port = option_value(as_words(service["command"]), option)
    assert port, f"{name} command has no {option}"
    test = " ".join(as_words(service["healthcheck"]["test"]))
    assert f"http://127.0.0.1:{port}/ready" in test, test
    assert "curl" not in test and "wget" not in test, "the image has neither curl nor wget"


def test_serve_publishes_8000_on_all_interfaces() -> None:
    """serve binds 0.0.0.0:8000 in the container and publishes that port."""
    serve = services()["serve"]
    words = as_words(serve["command"])
    assert option_value(words, "--host") == "0.0.0.0"
    assert option_value(words, "--port") == "8000"
    targets = [
        str(port["target"]) if isinstance(port, dict) else str(port).rsplit(":", 1)[-1]
        for port in serve.get("ports") or []
    ]
    assert "8000" in targets


@pytest.mark.parametrize("name", ZAPSTREAM_SERVICES)
def test_zapstream_services_wait_for_a_healthy_redis(name: str) -> None:
    """The zapstream services start once Redis is healthy and reach it by its service name."""
    service = services()[name]
    depends_on = service.get("depends_on") or {}
    assert isinstance(depends_on, dict), "the long form is needed for condition"
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert env_of(service)["REDIS_URL"].startswith("redis://redis:6379/")


def test_project_waits_for_a_healthy_postgres() -> None:
    """project writes PostgreSQL, so it starts once postgres is healthy."""
    assert services()["project"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("serve", "WHATSAPP_APP_SECRET"),
        ("serve", "WHATSAPP_VERIFY_TOKEN"),
        ("work", "WHATSAPP_ACCESS_TOKEN"),
    ],
)
def test_secrets_come_from_the_environment_and_are_required(name: str, variable: str) -> None:
    """Secrets are ${VAR:?...} interpolations, never literals, and Compose refuses without them."""
    value = env_of(services()[name])[variable]
    assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", value), value


@pytest.mark.parametrize("name", ["redis", "postgres", *ZAPSTREAM_SERVICES])
def test_services_restart_unless_stopped(name: str) -> None:
    """A crashed service comes back by itself."""
    assert services()[name].get("restart") == "unless-stopped"


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_work_has_a_grace_period_for_in_flight_work() -> None:
    """work gets longer than Docker's default 10 s between SIGTERM and SIGKILL."""
    assert seconds(str(services()["work"]["stop_grace_period"])) >= 30


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    """A builder stage and a final stage, both on python:3.11-slim; the venv is copied over."""
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert all(stage[0][1].split()[0] == "python:3.11-slim" for stage in stages)
    copies = [args for name, args in stages[-1] if name == "COPY"]
    assert any(args.startswith("--from=") for args in copies), copies


def test_dockerfile_final_stage_runs_zapstream_as_non_root() -> None:
    """The final stage switches to a non-root USER and has ENTRYPOINT ["zapstream"]."""
    user = final_stage_value("USER")
    assert user, "the final stage has no USER line"
    assert user.split(":")[0] not in ROOT_USERS
    assert json.loads(final_stage_value("ENTRYPOINT") or "null") == ["zapstream"]
    command = json.loads(final_stage_value("CMD") or "null")
    assert command and command[0] in CONTRACT_SUBCOMMANDS
    assert final_stage_value("WORKDIR") == "/app"
    assert "8000" in (final_stage_value("EXPOSE") or "").split()


def test_dockerfile_installs_no_dev_extras() -> None:
    """Only runtime dependencies go into the image: no `[dev]` or `[bench]` extras."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"\[(dev|bench)[],]", text)


def test_dockerfile_final_stage_has_streams_yaml_and_a_writable_data_dir() -> None:
    """streams.yaml is in /app (ZAPSTREAM_CONFIG's default) and /app/data belongs to the user."""
    final = dockerfile_stages()[-1]
    copies = [args.split() for name, args in final if name == "COPY"]
    assert any(words[0] == "streams.yaml" for words in copies), copies
    runs = " ".join(args for name, args in final if name == "RUN")
    assert re.search(r"chown\s+\S+\s+/app/data", runs), runs
