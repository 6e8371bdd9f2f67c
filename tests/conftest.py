"""Session fixtures: a small real demo dataset, a tiny real model trained on it, its index.

They are built once per test session through the real programs, so every test that needs
a model or an index uses the same artifacts a user would produce.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Quieter TensorFlow; set before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_TRAIN_FLAGS = [
    "--cnn", "tiny", "--cnn_weights", "none", "--crop_size", "64", "--resize_size", "64",
    "--no_hflip", "--joint_space", "64", "--word_dim", "32", "--batch_size", "50",
    "--learning_rate", "2e-3", "--seed", "1", "--cache",
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
