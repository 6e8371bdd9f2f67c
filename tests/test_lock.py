"""The lock files (`make lock`): exact pins with hashes that pyproject.toml's ranges allow.

requirements/lock.txt pins the project with its dev extra; requirements/image.lock.txt the
serving image's dependencies, with tensorflow-cpu for tensorflow on x86_64. A lock that
drifts out of pyproject.toml's ranges, loses its hashes or disagrees with the other lock
fails here rather than in a Docker build.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
IMAGE_LOCK = REPO / "requirements" / "image.lock.txt"
X86_LINUX = {"platform_machine": "x86_64", "sys_platform": "linux", "python_version": "3.11"}


@cache
def pins(path: Path) -> dict[str, list[tuple[str, Marker | None, list[str]]]]:
    """name -> [(version, marker, hashes)] from a `uv pip compile --generate-hashes` file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out: dict[str, list[tuple[str, Marker | None, list[str]]]] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        spec = re.sub(r"--hash=\S+", "", line).strip()
        requirement = Requirement(spec)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {spec} is not an exact pin"
        name = canonicalize_name(requirement.name)
        out.setdefault(name, []).append((specifier.version, requirement.marker, hashes))
    assert out, f"{path.name} pins nothing"
    return out


def pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


def project_requirements(*, dev: bool) -> list[Requirement]:
    project = pyproject()
    deps = list(project["dependencies"])  # type: ignore[call-overload]
    if dev:
        deps += project["optional-dependencies"]["dev"]  # type: ignore[index]
    return [Requirement(d) for d in deps]


def version_for(path: Path, name: str, env: dict[str, str] | None = None) -> str | None:
    """The version a lock installs for `name` where `env`'s markers hold (any, if None)."""
    for version, marker, _ in pins(path).get(canonicalize_name(name), []):
        if env is None or marker is None or marker.evaluate(env):
            return version
    return None


@pytest.mark.parametrize("path", [LOCK, IMAGE_LOCK], ids=lambda p: p.name)
def test_every_pin_has_hashes(path: Path) -> None:
    for name, entries in pins(path).items():
        for version, _, hashes in entries:
            assert hashes, f"{path.name}: {name}=={version} has no --hash (pip --require-hashes)"


def test_lock_pins_every_project_and_dev_requirement_within_its_range() -> None:
    for requirement in project_requirements(dev=True):
        version = version_for(LOCK, requirement.name)
        assert version, f"lock.txt has no {requirement.name}: run `make lock`"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"lock.txt pins {requirement.name}=={version}, outside pyproject.toml's "
            f"{requirement}: run `make lock`"
        )


def test_image_lock_has_tensorflow_cpu_on_x86_64_and_the_same_pins_as_lock() -> None:
    tensorflow = next(r for r in project_requirements(dev=False) if r.name == "tensorflow")
    cpu = version_for(IMAGE_LOCK, "tensorflow-cpu", X86_LINUX)
    assert cpu and tensorflow.specifier.contains(cpu), f"image.lock.txt: tensorflow-cpu=={cpu}"
    assert version_for(IMAGE_LOCK, "tensorflow", X86_LINUX) is None, (
        "image.lock.txt installs the CUDA-capable tensorflow wheel on x86_64"
    )
    arm = {**X86_LINUX, "platform_machine": "aarch64"}
    assert version_for(IMAGE_LOCK, "tensorflow", arm), "no tensorflow where tensorflow-cpu is not"
    for requirement in project_requirements(dev=False):
        if requirement.name == "tensorflow":
            continue
        locked = version_for(IMAGE_LOCK, requirement.name, X86_LINUX)
        assert locked, f"image.lock.txt has no {requirement.name}: run `make lock`"
        assert locked == version_for(LOCK, requirement.name, X86_LINUX), (
            f"{requirement.name}: image.lock.txt and lock.txt disagree: run `make lock`"
        )


def test_dockerfile_installs_the_image_lock_with_hashes_then_the_project_alone() -> None:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    assert "COPY requirements/image.lock.txt" in text
    installs = [ln for ln in text.splitlines() if re.match(r"RUN .*pip install", ln)]
    assert any("--require-hashes" in ln and "image.lock.txt" in ln for ln in installs), installs
    project = [ln for ln in installs if re.search(r"pip install [^&]* \.(\s|$)", ln)]
    assert project and all("--no-deps" in ln for ln in project), project
