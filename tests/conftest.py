"""Session fixtures: a small real demo dataset, a tiny real model trained on it, its index.

They are built once per test session through the real programs, so every test that needs
a model or an index uses the same artifacts a user would produce.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from tests.service_helpers import ClientFactory, ServiceBackend

# Quieter TensorFlow; set before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# CI sets CI=true: there a test whose tool is missing must fail, not skip and stay green.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip the calling test when `what` is missing here; fail it under CI, which installs it."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing in CI, which must install it (.ci/run)")
    pytest.skip(f"{what} is missing")


# float32 and Keras' GRU loop named, not "auto": the session's model is then the same on
# every machine, whatever its CPU computes natively.
TINY_TRAIN_FLAGS = [
    "--cnn", "tiny", "--cnn_weights", "none", "--crop_size", "64", "--resize_size", "64",
    "--no_hflip", "--joint_space", "64", "--word_dim", "32", "--batch_size", "50",
    "--learning_rate", "2e-3", "--seed", "1", "--cache",
    "--mixed_precision", "off", "--gru_loop", "keras",
]  # fmt: skip


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset in the Flickr8k layout (400 / 40 / 40 images, 64 px)."""
    from training.demo_data import DemoConfig, generate

    out = tmp_path_factory.mktemp("demo") / "data"
    generate(out, DemoConfig(train=400, val=40, test=40, seed=3))
    return out


def demo_flags(data: Path) -> list[str]:
    """The seed's data flags pointing at a demo dataset."""
    return [
        "--images_path", str(data / "Flicker8k_Dataset"),
        "--texts_path", str(data / "Flickr8k.token.txt"),
    ]  # fmt: skip


def train_flags(data: Path) -> list[str]:
    return [
        *demo_flags(data),
        "--train_imgs_file_path", str(data / "Flickr_8k.trainImages.txt"),
        "--val_imgs_file_path", str(data / "Flickr_8k.devImages.txt"),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def demo_model_dir(demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VSE++ model trained on the small demo set by `training.train` (about 40 s;
    R@5 around 75-85 both ways on its 40 test images, far above the 12.5 of chance)."""
    from training.train import main

    out = tmp_path_factory.mktemp("model") / "tiny"
    argv = [*train_flags(demo_data_dir), *TINY_TRAIN_FLAGS, "--epochs", "5",
            "--max_violation_after", "2", "--save_model_path", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def demo_index_dir(
    demo_model_dir: Path, demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The demo test split indexed with the tiny model by `index.build`."""
    from index.build import main

    out = tmp_path_factory.mktemp("index") / "demo"
    argv = [*demo_flags(demo_data_dir), "--model_dir", str(demo_model_dir),
            "--imgs_file_path", str(demo_data_dir / "Flickr_8k.testImages.txt"),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def service_backend(demo_model_dir: Path, demo_index_dir: Path) -> Any:
    """The demo model and index loaded as the service tests use them."""
    from tests.service_helpers import demo_backend

    return demo_backend(demo_model_dir, demo_index_dir)


@pytest.fixture(scope="module")
def backend(service_backend: ServiceBackend) -> ServiceBackend:
    """The service tests' backend (tests/test_service_*.py): the session's demo one."""
    return service_backend


@pytest.fixture
def make_client(backend: ServiceBackend) -> Iterator[ClientFactory]:
    """Build an app (with settings overrides) and enter a TestClient on it; each client is
    closed when the test ends."""
    from service.config import Settings
    from service.main import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette's notice about httpx vs httpx2
        from fastapi.testclient import TestClient

    opened: list[TestClient] = []

    def make(
        encoders: Any = None,
        index: Any = None,
        raise_server_exceptions: bool = True,
        **settings: Any,
    ) -> TestClient:
        app = create_app(
            Settings(**settings),
            encoders if encoders is not None else backend.encoders,
            index if index is not None else backend.index,
        )
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    """A TestClient on an app with the default settings."""
    return make_client()


# Fixtures that train a model (or need one trained): a test that uses one is slow, whatever
# its own marks say, so `pytest -m "not slow"` trains nothing.
TRAINED_FIXTURES = frozenset({"demo_model_dir", "demo_index_dir"})
# Markers of tests that need what CI does not provide: torch (no dependency), the GPU
# training image's CUDA base (not on CI's machines, Docker Hub out of reach).
OPT_IN_MARKERS = ("torch", "gpu_image")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # Tests of what CI does not have run only when asked for by name (`-m torch`), so the
    # default run and CI's lanes deselect them rather than skip them (a skip would pass CI).
    asked = config.option.markexpr or ""
    opt_out = [name for name in OPT_IN_MARKERS if name not in asked]
    kept = [i for i in items if not any(i.get_closest_marker(name) for name in opt_out)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
