"""A full ResNet152 with random weights: torch against its Keras port (opt-in: `-m torch`).

torch is not a dependency (pip install torch into the venv to run this). The negative
control loads the same tensors into Keras' own ResNet152, whose layout differs (stride on
the first 1x1 conv, conv biases, batch-norm eps 1.001e-5): it must disagree, or the
comparison would prove nothing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from tests.conftest import require

pytestmark = pytest.mark.torch


def _centred_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _keras_applications_resnet152(state: dict[str, np.ndarray]) -> Any:
    """Keras' ResNet152 with torchvision's tensors put where their names correspond."""
    import keras

    from training.original.weights import conv_kernel

    model = keras.applications.ResNet152(
        weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3)
    )

    def bn(name: str, key: str) -> None:
        parts = ("weight", "bias", "running_mean", "running_var")
        model.get_layer(name).set_weights([state[f"{key}.{p}"] for p in parts])

    def conv(name: str, key: str) -> None:
        w = conv_kernel(state[f"{key}.weight"])
        model.get_layer(name).set_weights([w, np.zeros(w.shape[-1], np.float32)])

    conv("conv1_conv", "conv1")
    bn("conv1_bn", "bn1")
    for stage, blocks in enumerate((3, 8, 36, 3)):
        for b in range(blocks):
            k, t = f"conv{stage + 2}_block{b + 1}", f"layer{stage + 1}.{b}"
            for i in (1, 2, 3):
                conv(f"{k}_{i}_conv", f"{t}.conv{i}")
                bn(f"{k}_{i}_bn", f"{t}.bn{i}")
            if b == 0:
                conv(f"{k}_0_conv", f"{t}.downsample.0")
                bn(f"{k}_0_bn", f"{t}.downsample.1")
    return model


def _randomise_deep(net: Any, gen: Any) -> None:
    """Random weights that keep 152 layers finite: He-scaled convs, batch-norm statistics
    near 1, and small scales on each block's last batch norm (its residual branch)."""
    import torch

    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype != torch.float32:
                continue
            if t.ndim == 4:
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif name.endswith("bn3.weight"):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.2 + 0.1)
            else:
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.5)


def test_resnet152_equals_torch_and_keras_layout_does_not() -> None:
    require(importlib.util.find_spec("torch") is not None, "torch (for -m torch)")
    import torch

    from tests.data.make_original_fixture import ResNet
    from training.original.weights import cnn_state, infer_spec, load_backbone
    from training.tv_backbones import ResNetSpec, build_tv

    gen = torch.Generator().manual_seed(1)
    net = ResNet((3, 8, 36, 3), 64).eval()
    _randomise_deep(net, gen)
    x = torch.randn(4, 3, 224, 224, generator=gen)
    with torch.no_grad():
        ref = net(x).numpy()
    state = {f"cnn.module.{k}": v.numpy() for k, v in net.state_dict().items()}
    tv = cnn_state(state)
    spec = infer_spec(tv)
    assert spec == ResNetSpec("bottleneck", (3, 8, 36, 3), 64)
    model = build_tv(spec)
    load_backbone(model, tv)
    images = x.permute(0, 2, 3, 1).numpy()
    ours = model(images).numpy()
    assert np.isfinite(ref).all() and ref.std() > 0
    assert _centred_cosines(ours, ref).min() >= 0.999
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999

    theirs = _keras_applications_resnet152(tv)(images).numpy()
    assert _centred_cosines(theirs, ref).min() < 0.999
