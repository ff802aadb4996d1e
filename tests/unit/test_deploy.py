"""The Docker deployment: docker-compose.yml, .env.example and docker/Dockerfile* against the code
they run.

No Docker engine is needed: the compose file is read with PyYAML and the Dockerfiles with a small
parser of their instructions. The commands are checked against `cli.stack.stack_specs` (a
`lookalike ...` command through the CLI's own parser), the settings against
`shared.settings.Settings`, the paths against this checkout.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import processes
from cli.main import build_parser, cmd_api
from cli.stack import api_argv, stack_specs
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
REDIS_URL = "redis://:a-redis-password@redis:6379/0"  # with SHELL's REDIS_PASSWORD
# Each compose service that runs one of `lookalike up`'s processes, and which one.
STACK_PROCESS = {"api": "api", "writer": "writer", "embed": "embed", "embed-gpu": "embed"}
LOOKALIKE_NAME = re.compile(r"\bLOOKALIKE_[A-Z0-9_]+")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
# What the tests give compose for its required variables (`${NAME:?message}`).
SHELL = {
    "LOOKALIKE_API_KEY": "a-key-of-the-tests",
    "S3_ACCESS_KEY": "an-access-key",
    "S3_SECRET_KEY": "a-secret-key",
    "REDIS_PASSWORD": "a-redis-password",
}


# --- a small Dockerfile parser ---------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            values.update(parse_env(args))
        return values

    def cmd(self) -> list[str]:
        args = self.last("CMD")
        assert args is not None, "the stage has no CMD"
        return exec_form(args)


def logical_lines(text: str) -> list[str]:
    """Instructions joined across backslash continuations; comments and blank lines dropped."""
    lines: list[str] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        # As Docker does, comment lines are dropped even inside a continued instruction.
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        lines.append(" ".join([*pending, line]))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return lines


def parse_dockerfile(path: Path) -> list[Stage]:
    """The build stages of a Dockerfile, with ARGs declared before the first FROM substituted."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM in {path.name}"
            name, _, default = args.partition("=")
            global_args[name] = default.strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    assert stages, f"{path.name} has no FROM"
    return stages


def parse_env(args: str) -> dict[str, str]:
    """`ENV A=1 B="two words"` or the legacy `ENV A 1`."""
    words = shlex.split(args)
    if all("=" in word for word in words):
        return {key: value for key, _, value in (word.partition("=") for word in words)}
    return {words[0]: " ".join(words[1:])}


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK command as argv (shell form runs under /bin/sh -c)."""
    if args.startswith("["):
        argv = json.loads(args)
        assert isinstance(argv, list) and all(isinstance(word, str) for word in argv)
        return argv
    return ["/bin/sh", "-c", args]


def copy_sources(stage: Stage) -> list[str]:
    """The build-context paths a stage's COPY/ADD instructions read (not `--from` copies)."""
    sources: list[str] = []
    for instruction in stage.instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = (
            exec_form(instruction.args)
            if instruction.args.startswith("[")
            else (instruction.args.split())
        )
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources += paths[:-1]
    return sources


# --- the compose file ------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(compose, dict)
    return compose


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def dockerfile_of(service: str) -> Path | None:
    build = SERVICES[service].get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def final_stage(service: str) -> Stage:
    dockerfile = dockerfile_of(service)
    assert dockerfile is not None, f"{service} is not built from a Dockerfile of ours"
    return parse_dockerfile(dockerfile)[-1]


OUR_SERVICES = [name for name in SERVICES if dockerfile_of(name) is not None]
# Those that run the project's own code (flower, from the same image, runs only Celery's).
CODE_SERVICES = [name for name in OUR_SERVICES if name in STACK_PROCESS]


def command(service: str) -> list[str]:
    """What the service's container runs: its compose `command`, else its image's CMD."""
    given = SERVICES[service].get("command")
    if given is None:
        return final_stage(service).cmd()
    return shlex.split(given) if isinstance(given, str) else [str(word) for word in given]


def interpolate(value: str, shell: dict[str, str] = SHELL) -> str:
    """Compose's `${NAME:-default}` and `${NAME:?error}` with only `shell` set."""

    def substitute(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if shell.get(name):
            return shell[name]
        if kind == "?":
            raise LookupError(rest)
        return rest or ""

    return INTERPOLATION.sub(substitute, value)


def compose_variables() -> set[str]:
    return {match.group(1) for match in INTERPOLATION.finditer(COMPOSE_FILE.read_text())}


def env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name: value for name, value in pairs}


def environment(service: str) -> dict[str, str]:
    """The container's environment: the image's ENV, then the service's `environment`."""
    values = final_stage(service).env() if dockerfile_of(service) else {}
    given = SERVICES[service].get("environment") or {}
    if isinstance(given, list):
        given = dict(item.split("=", 1) for item in given)
    values.update({key: interpolate(str(value)) for key, value in given.items()})
    return values


def volume_mounts(service: str) -> dict[str, str]:
    """Container path -> named volume (bind mounts are named by their host path)."""
    mounts: dict[str, str] = {}
    for volume in SERVICES[service].get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[target] = source
    return mounts


def resolved(argv: list[str]) -> list[str]:
    """What a `lookalike api ...` command runs (it execs gunicorn); any other argv as it is."""
    if Path(argv[0]).name != "lookalike":
        return argv
    args = build_parser().parse_args(argv[1:])
    assert args.handler is cmd_api, f"only `lookalike api` runs in a container: {argv}"
    return api_argv(args.host, args.port)


def normalized(argv: list[str]) -> list[str]:
    """argv resolved, without the `python -m` launcher and with any bind address masked."""
    words = resolved(argv)
    if len(words) > 2 and words[1] == "-m" and Path(words[0]).name.startswith("python"):
        words = words[2:]
    if "--bind" in words:
        words[words.index("--bind") + 1] = "<address>"
    return words


def module_file(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


# --- tests: the compose file -----------------------------------------------------------------


def test_compose_defines_the_services_and_no_version_key() -> None:
    assert "version" not in COMPOSE, "the compose spec has no version key"
    assert {"redis", "api", "writer", "embed", "embed-gpu"} <= set(SERVICES)
    assert set(OUR_SERVICES) == {"api", "writer", "embed", "embed-gpu", "flower"}
    assert set(COMPOSE["volumes"]) >= {"redis-data", "snapshots", "keras-cache"}


def test_every_lookalike_variable_is_a_setting() -> None:
    used: set[str] = set()
    for path in [COMPOSE_FILE, ENV_EXAMPLE, *DOCKERFILES]:
        used |= set(LOOKALIKE_NAME.findall(path.read_text()))
    assert used, "no LOOKALIKE_* variable found"
    fields = {f"LOOKALIKE_{name.upper()}" for name in Settings.model_fields}
    unknown = used - fields
    assert not unknown, f"not fields of shared.settings.Settings: {sorted(unknown)}"


@pytest.mark.parametrize("service", CODE_SERVICES)
def test_each_service_environment_is_valid_settings(service: str) -> None:
    env = environment(service)
    assert env["LOOKALIKE_REDIS_URL"] == REDIS_URL
    assert env["LOOKALIKE_REDIS_URL"].split("@")[1].split(":")[0] in SERVICES
    assert env["LOOKALIKE_WEIGHTS"] == "imagenet"
    assert "${LOOKALIKE_WEIGHTS:-imagenet}" in COMPOSE_FILE.read_text()
    values: dict[str, Any] = {
        key.removeprefix("LOOKALIKE_").lower(): value
        for key, value in env.items()
        if key.startswith("LOOKALIKE_")
    }
    Settings(**values)  # raises on a value the service would refuse at start


@pytest.mark.parametrize("service", sorted(STACK_PROCESS))
def test_compose_commands_match_stack_specs(service: str) -> None:
    specs = stack_specs(Settings(redis_url=None), REDIS_URL, "0.0.0.0", 8000)
    expected = next(spec for spec in specs if spec.name == STACK_PROCESS[service])
    assert normalized(command(service)) == normalized(expected.argv)


def test_flower_is_the_command_of_lookalike_up_flower_in_the_monitoring_profile() -> None:
    expected = processes.flower("0.0.0.0", 5555)
    assert normalized(command("flower")) == normalized(expected)
    flower_env = {k: interpolate(v) for k, v in SERVICES["flower"]["environment"].items()}
    assert flower_env == {"CELERY_BROKER_URL": REDIS_URL}
    assert SERVICES["flower"]["profiles"] == ["monitoring"]
    # No authentication: reachable from this host only.
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"]


def test_the_api_service_cannot_start_without_a_key() -> None:
    given = SERVICES["api"]["environment"]["LOOKALIKE_API_KEY"]
    assert given == "${LOOKALIKE_API_KEY:?set LOOKALIKE_API_KEY (see .env.example)}"
    with pytest.raises(LookupError, match=r"^set LOOKALIKE_API_KEY \(see \.env\.example\)$"):
        interpolate(given, shell={"LOOKALIKE_API_KEY": ""})
    assert environment("api")["LOOKALIKE_API_KEY"] == SHELL["LOOKALIKE_API_KEY"]
    for service in CODE_SERVICES:
        if service != "api":
            assert "LOOKALIKE_API_KEY" not in environment(service), service


def test_the_images_default_command_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    argv = final_stage("api").cmd()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOKALIKE_")}
    env["LOOKALIKE_REDIS_URL"] = "redis://127.0.0.1:9/0"  # never reached: it stops before
    lookalike = Path(sys.executable).with_name(argv[0])
    result = subprocess.run(
        [str(lookalike), *argv[1:]], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: refusing to serve the API on 0.0.0.0 without an API")


def test_env_example_documents_every_variable_compose_reads_with_no_secret() -> None:
    documented = env_example()
    assert set(documented) == compose_variables() | {"COMPOSE_PROJECT_NAME"}
    assert documented["LOOKALIKE_API_KEY"] == ""
    assert documented["S3_ACCESS_KEY"] == documented["S3_SECRET_KEY"] == ""
    assert documented["REDIS_PASSWORD"] == ""
    for name, value in documented.items():
        if value and name.startswith("LOOKALIKE_"):
            Settings(**{name.removeprefix("LOOKALIKE_").lower(): value})
    # The example's values are compose's defaults: copying it changes nothing but the key.
    for match in INTERPOLATION.finditer(COMPOSE_FILE.read_text()):
        name, kind, default = match.groups()
        if kind != "?":
            assert default == documented[name], name


@pytest.mark.parametrize("service", CODE_SERVICES)
def test_commands_name_modules_that_exist(service: str) -> None:
    argv = normalized(command(service))
    if argv[0] == "celery":
        modules = [argv[argv.index("-A") + 1]]
    elif argv[0] == "gunicorn":
        assert command(service)[0] == "lookalike", "the API runs as `lookalike api`"
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts["lookalike"] == "cli.main:main"
        assert module_file("cli.main").is_file()
        target = argv[-1]
        module, _, call = target.partition(":")
        function = call.removesuffix("()")
        assert re.search(rf"^def {function}\(", module_file(module).read_text(), re.MULTILINE)
        modules = [module]
    else:
        modules = [argv[0]]
    dockerfile = dockerfile_of(service)
    assert dockerfile is not None
    copied = {source for stage in parse_dockerfile(dockerfile) for source in copy_sources(stage)}
    for module in modules:
        assert module_file(module).is_file(), f"{service} runs {module}, which is not in the repo"
        assert f"{module.split('.')[0]}/" in copied, f"the image does not copy {module}'s package"


def test_redis_is_appendonly_on_a_named_volume_with_a_healthcheck() -> None:
    redis = SERVICES["redis"]
    assert interpolate(redis["image"]).startswith("redis:7")
    argv = [interpolate(word) for word in redis["command"]]
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--appendfsync") + 1] == Settings().appendfsync == "everysec"
    assert int(argv[argv.index("--maxmemory") + 1]) == Settings().redis_maxmemory
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert "${LOOKALIKE_APPENDFSYNC:-everysec}" in redis["command"]
    assert volume_mounts("redis")["/data"] in COMPOSE["volumes"]
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_services_wait_for_a_healthy_redis(service: str) -> None:
    assert SERVICES[service]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_and_writer_share_nothing_but_redis_and_the_object_store() -> None:
    api, writer = environment("api"), environment("writer")
    assert (
        api["LOOKALIKE_SNAPSHOT_URL"]
        == writer["LOOKALIKE_SNAPSHOT_URL"]
        == "s3://lookalike/snapshots"
    )
    assert api["AWS_ENDPOINT_URL"] == writer["AWS_ENDPOINT_URL"] == "http://s3:9000"
    assert "s3" in SERVICES and SERVICES["s3"]["volumes"] == ["snapshots:/data"]
    for service in ("api", "writer"):
        assert not SERVICES[service].get("volumes"), f"{service} mounts a volume"
        assert SERVICES[service]["depends_on"]["s3"]["condition"] == "service_started"
    assert api["LOOKALIKE_DATA_DIR"] == final_stage("api").env()["LOOKALIKE_DATA_DIR"]


def test_api_publishes_its_port_and_checks_healthz() -> None:
    api = SERVICES["api"]
    argv = resolved(command("api"))
    port = argv[argv.index("--bind") + 1].rsplit(":", 1)[1]
    assert port in final_stage("api").all("EXPOSE")
    assert any(str(mapping).endswith(f":{port}") for mapping in api["ports"])
    probe = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in probe
    image_probe = final_stage("api").last("HEALTHCHECK")
    assert image_probe is not None and f"127.0.0.1:{port}/healthz" in image_probe


def test_services_that_are_not_the_api_disable_the_image_healthcheck() -> None:
    for service in OUR_SERVICES:
        stage = final_stage(service)
        probe = stage.last("HEALTHCHECK")
        if command(service) != stage.cmd() and probe is not None and probe != "NONE":
            assert SERVICES[service].get("healthcheck", {}).get("disable") is True, service


def test_embed_workers_can_be_scaled_and_get_a_warm_shutdown() -> None:
    specs = stack_specs(Settings(redis_url=None), REDIS_URL, "0.0.0.0", 8000)
    stop_timeout = next(spec for spec in specs if spec.name == "embed").stop_timeout
    for service in ("embed", "embed-gpu"):
        config = SERVICES[service]
        assert "container_name" not in config and "ports" not in config, service
        assert config["deploy"]["replicas"] == 1
        grace = config["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) >= stop_timeout, service


def test_embed_workers_share_the_keras_cache_in_the_users_home() -> None:
    for service in ("embed", "embed-gpu"):
        user = final_stage(service).last("USER")
        assert user not in (None, "root", "0"), f"{service} runs as root"
        cache = f"/home/{user}/.keras"
        assert volume_mounts(service)[cache] == "keras-cache", service
        # Created in the image with the user as owner, so a fresh named volume is writable.
        setup = " ".join(final_stage(service).all("RUN"))
        assert cache in setup and f"chown {user}:{user}" in setup


def test_gpu_service_requests_an_nvidia_device_in_the_gpu_profile() -> None:
    gpu = SERVICES["embed-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert dockerfile_of("embed-gpu") == ROOT / "docker" / "Dockerfile.gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name in ("redis", "api", "writer", "embed"):
        assert "profiles" not in SERVICES[name], f"{name} must start without a profile"


def test_gpu_image_runs_the_measured_gpu_settings() -> None:
    env = environment("embed-gpu")
    assert env["KERAS_BACKEND"] == "jax"
    assert env["LOOKALIKE_PRECISION"] == "bfloat16"
    assert int(env["LOOKALIKE_BATCH_SIZE"]) == 256
    assert env["LOOKALIKE_DECODE"] == "gpu"
    for name in ("LOOKALIKE_PRECISION", "LOOKALIKE_DECODE", "KERAS_BACKEND"):
        assert name not in environment("embed"), f"CPU workers keep the default {name}"


# --- tests: the Dockerfiles ------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_copy_sources_exist_and_are_not_ignored(dockerfile: Path) -> None:
    ignored = dockerignore_patterns()
    sources = [source for stage in parse_dockerfile(dockerfile) for source in copy_sources(stage)]
    assert {"pyproject.toml", "README.md", "shared/", "api/", "workers/"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
        name = source.rstrip("/")
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in ignored), name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_runs_as_a_user_on_python_311_slim(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    assert all(stage.base == "python:3.11-slim" for stage in stages)
    final = stages[-1]
    assert final.last("USER") not in (None, "root", "0")
    installs = " ".join(run for stage in stages for run in stage.all("RUN"))
    # docker/pip-install.sh: pip install --no-cache-dir; the project, with the GPU extra or not
    assert re.search(r'pip-install (\.|"\.\[[a-z-]+\]")', installs)
    assert "pip install --no-cache-dir" in (ROOT / "docker" / "pip-install.sh").read_text()
    assert final.all("COPY")[0].startswith("--from="), "the runtime stage takes the built venv"


def test_cpu_image_serves_the_api_with_its_data_dir_on_a_volume() -> None:
    final = parse_dockerfile(DOCKERFILES[0])[-1]
    assert final.env()["LOOKALIKE_DATA_DIR"] == "/data"
    assert final.all("VOLUME") == ['["/data"]']
    assert final.all("EXPOSE") == ["8000"]
    assert final.cmd() == ["lookalike", "api", "--host", "0.0.0.0", "--port", "8000"]
    argv = resolved(final.cmd())
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:8000"


def test_gpu_image_installs_the_project_s_jax_cuda_extra() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["jax-cuda"]
    assert any(re.match(r"jax\[cuda\d+\]", dep) for dep in extra)
    assert any(dep.startswith("nvidia-nvimgcodec") for dep in extra)
    runs = " ".join(parse_dockerfile(DOCKERFILES[1])[0].all("RUN"))
    assert runs.count('pip-install ".[jax-cuda]"') == 2  # the cached layer and the project


def test_dockerfile_parser_joins_continuations_and_skips_comments(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\nFROM ${BASE} AS build\n"
        "RUN a \\\n    # a comment inside\n    && b\nFROM $BASE\n"
        'ENV A=1 B="two words"\nENV C 3\nCOPY --from=build /x /x\nCOPY a b/ c/\nCMD ["x", "y"]\n'
    )
    build, final = parse_dockerfile(dockerfile)
    assert (build.base, build.name, final.base) == ("python:3.11-slim", "build", "python:3.11-slim")
    assert build.all("RUN") == ["a && b"]
    assert final.env() == {"A": "1", "B": "two words", "C": "3"}
    assert copy_sources(final) == ["a", "b/"]
    assert final.cmd() == ["x", "y"]


# --- tests: .dockerignore and the Docker CLI -------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_excludes_the_venv_data_and_tests() -> None:
    patterns = set(dockerignore_patterns())
    assert {".venv", ".git", "data", "tests", "bench", "docs"} <= patterns
    assert not any(pattern.startswith("!") for pattern in patterns)


def compose_cli() -> list[str] | None:
    """`docker compose` (v2), else `docker-compose` (v1, Debian's), else None."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        probe = subprocess.run([*argv, "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return argv
    return None


def docker_compose_available() -> bool:
    return compose_cli() is not None


def compose_config(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`docker compose config -q`, with only `env` for compose's variables (no .env read)."""
    empty = tmp_path / "empty.env"
    empty.touch()
    shell = {key: value for key, value in os.environ.items() if not key.startswith("LOOKALIKE_")}
    argv = [*(compose_cli() or []), "--env-file", str(empty), *args, "-f", str(COMPOSE_FILE)]
    return subprocess.run(
        [*argv, "config", "-q"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={**shell, **env},
    )  # fmt: skip


@pytest.mark.skipif(not docker_compose_available(), reason="no `docker compose` on this machine")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_config_accepts_the_file(tmp_path: Path, profile: list[str]) -> None:
    # `config` only reads and validates the file; it needs no Docker engine.
    result = compose_config(tmp_path, *profile, **SHELL)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not docker_compose_available(), reason="no `docker compose` on this machine")
@pytest.mark.parametrize(
    "missing", ["LOOKALIKE_API_KEY", "S3_ACCESS_KEY", "S3_SECRET_KEY", "REDIS_PASSWORD"]
)
def test_docker_compose_refuses_to_run_without_its_secrets(tmp_path: Path, missing: str) -> None:
    result = compose_config(tmp_path, **{k: v for k, v in SHELL.items() if k != missing})
    assert result.returncode != 0
    assert f"set {missing} (see .env.example)" in result.stderr


def test_sys_executable_launcher_is_normalized_like_a_container_command() -> None:
    assert normalized([sys.executable, "-m", "workers.writer"]) == ["workers.writer"]
    assert normalized(["python", "-m", "workers.writer"]) == ["workers.writer"]
