"""`--mixed_precision auto` and `--gru_loop auto`, the command line's defaults: bfloat16 and
the hoisted GRU loop on a CPU that computes bfloat16 natively, float32 and Keras' loop
elsewhere (and on a GPU), decided from the CPU's flags (forced here), recorded, and kept by a
resumed run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from training.precision import (
    DEFAULTS_BEFORE_AUTO,
    RUN_CONFIG,
    choose,
    has_gpu,
    recorded_choices,
    resume_choices,
)
from vsepp import precision as vsepp_precision

ZEN4 = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = {"avx2", "fma", "avx512f", "amx_tile", "amx_bf16"}
AVX512_NO_BF16 = {"avx2", "fma", "avx512f", "avx512_vnni"}
AVX2 = {"avx2", "fma"}


@pytest.mark.parametrize(
    ("flags", "chosen"),
    [
        (ZEN4, ("bfloat16", "hoisted")),
        (SAPPHIRE_RAPIDS, ("bfloat16", "hoisted")),
        (AVX512_NO_BF16, ("off", "keras")),
        (AVX2, ("off", "keras")),
        (set(), ("off", "keras")),  # flags unreadable
    ],
)
def test_auto_is_bfloat16_and_the_hoisted_loop_only_where_the_cpu_has_bfloat16(
    flags: set[str], chosen: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="training.precision"):
        assert choose("auto", "auto", flags=flags) == chosen
    # Decided once and said why.
    assert f"--mixed_precision auto: {chosen[0]} (" in caplog.text
    assert f"--gru_loop auto: {chosen[1]} (" in caplog.text


@pytest.mark.parametrize("flags", [ZEN4, AVX2])
def test_explicit_values_are_kept_and_the_loop_follows_the_precision(flags: set[str]) -> None:
    native = flags == ZEN4
    for precision in ("off", "bfloat16", "float16"):
        for loop in ("keras", "hoisted"):
            assert choose(precision, loop, flags=flags) == (precision, loop)
        # The hoisted loop is faster only with bfloat16 computed natively.
        want = "hoisted" if precision == "bfloat16" and native else "keras"
        assert choose(precision, "auto", flags=flags) == (precision, want)
    assert choose("auto", "keras", flags=flags) == ("bfloat16" if native else "off", "keras")
    with pytest.raises(ValueError, match="--mixed_precision"):
        choose("bf16", "auto", flags=flags)
    with pytest.raises(ValueError, match="--gru_loop"):
        choose("auto", "packed", flags=flags)


def test_auto_stays_float32_on_a_gpu_across_workers_and_with_xla() -> None:
    for where in ({"gpu": True}, {"multiworker": True}, {"jit_compile": True}):
        assert choose("auto", "auto", flags=ZEN4, **where) == ("off", "keras"), where
    # Named, bfloat16 on a GPU keeps Keras' loop (cuDNN's); the hoisted loop is for CPUs.
    assert choose("bfloat16", "auto", flags=ZEN4, gpu=True) == ("bfloat16", "keras")


def test_a_strategy_over_a_gpu_is_seen() -> None:
    import tensorflow as tf

    def strategy(*devices: str) -> tf.distribute.Strategy:
        return SimpleNamespace(extended=SimpleNamespace(worker_devices=devices))  # type: ignore[return-value]

    assert has_gpu(strategy("/job:localhost/replica:0/task:0/device:GPU:0"))
    assert has_gpu(strategy("/device:CPU:0", "/job:worker/replica:0/task:1/device:GPU:1"))
    assert not has_gpu(strategy("/job:localhost/replica:0/task:0/device:CPU:0"))
    # The default strategy runs wherever TensorFlow places ops: on a GPU if there is one.
    visible = bool(tf.config.list_logical_devices("GPU"))
    assert has_gpu(tf.distribute.get_strategy()) == visible


def test_a_resumed_run_takes_its_recorded_choice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A run started before "auto", killed before it exported: the defaults of that time.
    assert recorded_choices(tmp_path)[0] == DEFAULTS_BEFORE_AUTO == {
        "mixed_precision": "off", "gru_loop": "keras"
    }  # fmt: skip
    # ... that exported: its manifest (written before gru_loop was recorded, here).
    manifest = {"training": {"mixed_precision": "bfloat16"}, "model_config": {"cnn": "tiny"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    recorded, source = recorded_choices(tmp_path)
    assert recorded == {"mixed_precision": "bfloat16", "gru_loop": "keras"}
    assert source.endswith("manifest.json")
    # A run started since: the configuration it wrote when it started comes first.
    (tmp_path / "train_state").mkdir()
    config = {"training": {"mixed_precision": "off"}, "model_config": {"gru_loop": "hoisted"}}
    (tmp_path / "train_state" / RUN_CONFIG).write_text(json.dumps(config))
    recorded, source = recorded_choices(tmp_path)
    assert recorded == {"mixed_precision": "off", "gru_loop": "hoisted"}
    assert source.endswith(RUN_CONFIG)
    with caplog.at_level(logging.INFO, logger="training.precision"):
        assert resume_choices("auto", "auto", recorded, source) == ("off", "hoisted")
        assert "as the resumed run recorded" in caplog.text
        # Named on the command line, a value is used as given, and the difference said.
        assert resume_choices("bfloat16", "auto", recorded, source) == ("bfloat16", "hoisted")
    assert "where the resumed run recorded off" in caplog.text


def test_the_cli_defaults_to_auto() -> None:
    from training.train import configs, parse_args

    base = ["--images_path", "x", "--texts_path", "t", "--train_imgs_file_path", "train",
            "--val_imgs_file_path", "val", "--save_model_path", "m"]  # fmt: skip
    args = parse_args(base)
    assert (args.mixed_precision, args.gru_loop) == ("auto", "auto")
    mcfg, tcfg, _ = configs(parse_args([*base, "--mixed_precision", "off", "--gru_loop",
                                        "hoisted"]), 10, 0)  # fmt: skip
    assert (tcfg.mixed_precision, mcfg.gru_loop) == ("off", "hoisted")


def test_the_default_trains_records_its_choice_and_a_resume_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real run with the defaults, on a CPU with AVX512_BF16 (forced): bfloat16 and the
    hoisted loop, recorded where the run's options are; the export computes in float32 (so
    `--precision bfloat16` can still rewrite it); resumed on a CPU without, it stays as it was."""
    import keras

    from tests.conftest import train_flags
    from training.demo_data import DemoConfig, generate
    from training.train import main
    from vsepp.model_dir import load_encoders

    data, run = tmp_path / "data", tmp_path / "run"
    generate(data, DemoConfig(train=20, val=5, test=5, seed=2, image_size=32))
    argv = [*train_flags(data), "--cnn", "tiny", "--cnn_weights", "none", "--crop_size", "32",
            "--resize_size", "32", "--joint_space", "16", "--word_dim", "8", "--batch_size", "10",
            "--checkpoint_every", "0", "--save_model_path", str(run)]  # fmt: skip
    monkeypatch.setattr(vsepp_precision, "cpu_flags", lambda: frozenset(ZEN4))
    with caplog.at_level(logging.INFO, logger="training.precision"):
        assert main([*argv, "--epochs", "1"]) == 0
    assert "--mixed_precision auto: bfloat16 (this CPU has avx512_bf16" in caplog.text
    manifest = json.loads((run / "manifest.json").read_text())
    started = json.loads((run / "train_state" / RUN_CONFIG).read_text())
    for record in (manifest, started):
        assert record["training"]["mixed_precision"] == "bfloat16"
        assert record["model_config"]["gru_loop"] == "hoisted"
    # The run's policy did not outlive it.
    assert keras.config.dtype_policy().name == "float32"
    # The export is float32: bfloat16 is the embedding programs' choice, made by rewriting
    # its matrix products (a bfloat16 export would leave none to rewrite, and be refused).
    blobs = [p.read_bytes() for p in sorted((data / "Flicker8k_Dataset").glob("*.jpg"))[:4]]
    vectors = load_encoders(run, "bfloat16").encode_image_bytes(blobs)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)

    caplog.clear()
    monkeypatch.setattr(vsepp_precision, "cpu_flags", lambda: frozenset(AVX2))
    with caplog.at_level(logging.INFO, logger="training.precision"):
        assert main([*argv, "--epochs", "2", "--resume"]) == 0
    assert "--mixed_precision auto: bfloat16, as the resumed run recorded" in caplog.text
    resumed = json.loads((run / "train_state" / RUN_CONFIG).read_text())
    assert resumed["training"]["mixed_precision"] == "bfloat16"
    assert resumed["model_config"]["gru_loop"] == "hoisted"
    history = json.loads((run / "train_state" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
