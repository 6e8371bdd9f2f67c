"""Map the original's state dicts (torch layout) onto the Keras encoders.

Image state dict: `cnn.module.*` (ResNet in DataParallel) or `cnn.features.module.*` and
`cnn.classifier.*` (VGG, only its features wrapped), then `fc.*`, the projection; a
`*_precomp` run has `fc.*` alone. Text: `embed.weight` and `rnn.{weight,bias}_{ih,hh}_l{k}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import keras
import numpy as np

from training.tv_backbones import ResNetSpec, VGGSpec

StateDict = Mapping[str, np.ndarray]


class WeightMismatchError(ValueError):
    """The state dict does not fit the network it should load into."""


def cnn_state(image_state: StateDict) -> dict[str, np.ndarray]:
    """The backbone's tensors under torchvision's own names (`cnn.` and DataParallel's
    `module.` removed; VGG's pre-2017 classifier indices 1 and 4 renamed 0 and 3, as the
    original's `load_state_dict` does)."""
    out: dict[str, np.ndarray] = {}
    for key, value in image_state.items():
        if not key.startswith("cnn."):
            continue
        name = key[len("cnn.") :].replace("module.", "")
        if name.endswith("num_batches_tracked"):
            continue
        out[name] = value
    if "classifier.1.weight" in out and "classifier.0.weight" not in out:
        for old, new in (("1", "0"), ("4", "3")):
            for part in ("weight", "bias"):
                out[f"classifier.{new}.{part}"] = out.pop(f"classifier.{old}.{part}")
    return out


def infer_spec(state: StateDict) -> ResNetSpec | VGGSpec:
    """The torchvision architecture whose parameters `state` holds."""
    if "conv1.weight" in state:
        block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
        layers = []
        for stage in range(1, 5):
            blocks = {
                int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))
            }
            if not blocks or blocks != set(range(len(blocks))):
                raise WeightMismatchError(f"ResNet stage layer{stage} missing or incomplete")
            layers.append(len(blocks))
        return ResNetSpec(block, tuple(layers), int(state["conv1.weight"].shape[0]))
    if "features.0.weight" in state:
        convs = sorted(
            int(m.group(1)) for k in state if (m := re.match(r"features\.(\d+)\.weight$", k))
        )
        config: list[int | str] = []
        for i, index in enumerate(convs):
            config.append(int(state[f"features.{index}.weight"].shape[0]))
            nxt = convs[i + 1] if i + 1 < len(convs) else None
            # conv, relu, then the next conv (gap 2) or a pool first (gap 3); one pool at the end.
            if nxt is None or nxt - index == 3:
                config.append("M")
        if "classifier.0.weight" not in state:
            raise WeightMismatchError("VGG without its classifier layers")
        return VGGSpec(tuple(config), int(state["classifier.0.weight"].shape[0]))
    raise WeightMismatchError("the image state dict holds neither a ResNet nor a VGG (cnn.*)")


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch conv weight [out, in, kh, kw] -> Keras [kh, kw, in, out]."""
    return np.transpose(w, (2, 3, 1, 0))


def vgg_fc6_kernel(w: np.ndarray, channels: int) -> np.ndarray:
    """VGG's first classifier layer [4096, C*7*7] over a channels-first flatten -> the Keras
    kernel [7*7*C, 4096] over the channels-last flatten of `keras.layers.Flatten`."""
    side = round((w.shape[1] // channels) ** 0.5)
    return w.reshape(w.shape[0], channels, side, side).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def load_backbone(model: keras.Model, state: StateDict) -> None:
    """Set every weight of a `training.tv_backbones` model from a torchvision state dict;
    every tensor must be used and every weight set."""
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if key not in state:
            raise WeightMismatchError(f"tensor {key} missing from the checkpoint")
        used.add(key)
        value = np.asarray(state[key], np.float32)
        if shape is not None and value.shape != shape:
            raise WeightMismatchError(f"tensor {key} has shape {value.shape}, expected {shape}")
        return value

    last_channels = 0
    for layer in model.layers:
        key = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D):
            weights = [conv_kernel(take(f"{key}.weight"))]
            if layer.use_bias:
                weights.append(take(f"{key}.bias"))
            _set(layer, weights)
            last_channels = layer.filters
        elif isinstance(layer, keras.layers.BatchNormalization):
            parts = ("weight", "bias", "running_mean", "running_var")
            _set(layer, [take(f"{key}.{p}") for p in parts])
        elif isinstance(layer, keras.layers.Dense):
            w = take(f"{key}.weight")
            kernel = vgg_fc6_kernel(w, last_channels) if key == "classifier.0" else w.T
            _set(layer, [kernel, take(f"{key}.bias")])
    unused = sorted(set(state) - used)
    if unused:
        raise WeightMismatchError(f"checkpoint tensors the network has no place for: {unused[:5]}")


def _set(layer: keras.layers.Layer, weights: list[np.ndarray]) -> None:
    expected = [tuple(w.shape) for w in layer.get_weights()]
    got = [tuple(w.shape) for w in weights]
    if expected != got:
        raise WeightMismatchError(
            f"layer {layer.name}: checkpoint shapes {got}, network {expected}"
        )
    layer.set_weights(weights)


def load_projection(model: keras.Model, image_state: StateDict, layer: str = "img_fc") -> None:
    """The image side's `fc` (torch [D, F]) into the Dense `layer` (Keras [F, D])."""
    if "fc.weight" not in image_state or "fc.bias" not in image_state:
        raise WeightMismatchError("the image state dict has no fc.weight / fc.bias projection")
    w = np.asarray(image_state["fc.weight"], np.float32)
    _set(model.get_layer(layer), [w.T, np.asarray(image_state["fc.bias"], np.float32)])


def gru_weights(
    w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray
) -> list[np.ndarray]:
    """One torch GRU layer -> Keras GRU(reset_after=True) [kernel, recurrent_kernel, bias].

    torch stacks the gates (r, z, n), Keras (z, r, h); torch's two biases become Keras' bias
    rows [input; recurrent], the same split the reset-after formula uses.
    """

    def zrn(x: np.ndarray) -> np.ndarray:
        r, z, n = np.split(np.asarray(x, np.float32), 3, axis=0)
        return np.concatenate([z, r, n], axis=0)

    return [zrn(w_ih).T, zrn(w_hh).T, np.stack([zrn(b_ih), zrn(b_hh)])]


def text_dims(text_state: StateDict) -> tuple[int, int, int, int]:
    """(vocab size, word dim, hidden size, layers) of the original's text state dict."""
    if "embed.weight" not in text_state:
        raise WeightMismatchError("the text state dict has no embed.weight")
    vocab, word_dim = (int(d) for d in text_state["embed.weight"].shape)
    layers = 0
    while f"rnn.weight_ih_l{layers}" in text_state:
        layers += 1
    if layers == 0:
        raise WeightMismatchError("the text state dict has no rnn.weight_ih_l0 (a GRU)")
    if any("_reverse" in k for k in text_state):
        raise WeightMismatchError("bidirectional GRUs are not part of the original")
    hidden = int(text_state["rnn.weight_hh_l0"].shape[1])
    return vocab, word_dim, hidden, layers


def load_text(model: keras.Model, text_state: StateDict) -> None:
    """The word embedding and every GRU layer of the original's text encoder."""
    _, _, _, layers = text_dims(text_state)
    _set(model.get_layer("word_embedding"), [np.asarray(text_state["embed.weight"], np.float32)])
    for k in range(layers):
        parts = [
            text_state[f"rnn.{p}_l{k}"] for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        _set(model.get_layer(f"gru{k}"), gru_weights(*parts))
