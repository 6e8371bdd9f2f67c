"""Image backbones: keras.applications CNNs and a tiny CNN for the demo, as feature extractors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras

from training.tv_backbones import RESNET_LAYERS, VGG_CONFIGS, build_tv, standard_spec

log = logging.getLogger(__name__)

# name -> (constructor, preprocess rule of training.images.normalize, feature layer or None)
_APPS: dict[str, tuple[str, str, str | None]] = {
    "resnet152": ("ResNet152", "caffe", None),
    "resnet50": ("ResNet50", "caffe", None),
    # The paper takes VGG19's fc7 (4096-d), which needs the classifier head.
    "vgg19": ("VGG19", "caffe", "fc2"),
    "mobilenet_v3_large": ("MobileNetV3Large", "none", None),
}
# torchvision's ResNets and VGGs, layer for layer (training.tv_backbones): the imported
# models' backbones, fine-tuned further with --cnn_weights FILE from training.import_original.
TV_BACKBONES = tuple(f"{n}_tv" for n in (*RESNET_LAYERS, *VGG_CONFIGS))
BACKBONES = (*_APPS, *TV_BACKBONES, "tiny")


def preprocess_for(name: str) -> str:
    """The input normalisation rule (training.images.normalize) that backbone `name` expects."""
    if name == "tiny":
        return "unit"
    if name in TV_BACKBONES:
        return "torch"
    if name not in _APPS:
        raise ValueError(f"unknown --cnn {name!r}; choose one of {', '.join(BACKBONES)}")
    return _APPS[name][1]


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and what it expects."""

    model: keras.Model  # float image [B, S, S, 3] (already normalised) -> features [B, F]
    preprocess: str  # normalisation rule name (training.images.normalize)
    feature_dim: int  # F


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were asked for but could not be fetched."""


def tiny_cnn(image_size: int, width: int = 16) -> keras.Model:
    """A small from-scratch CNN for the demo set. Keeps a coarse spatial map (no global
    pooling) because the demo captions talk about left/right/above/below."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for i, mult in enumerate((1, 2, 4, 4)):
        x = keras.layers.Conv2D(width * mult, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        # Keras' default momentum (0.99) leaves the running statistics stale after a few
        # minutes of training from scratch and wrecks evaluation; PyTorch's default is 0.9.
        # synchronized: under MirroredStrategy the statistics are those of the global batch,
        # so several replicas train exactly as one device would.
        x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


def build_backbone(name: str, weights: str, image_size: int) -> Backbone:
    """Build backbone `name` with `weights` = "imagenet", "none" or a weights file path.

    Raises WeightsUnavailableError when ImageNet weights cannot be downloaded, rather than
    training silently from random weights.
    """
    if name == "tiny":
        model = tiny_cnn(image_size)
        if weights == "imagenet":
            raise ValueError("--cnn tiny has no ImageNet weights: use --cnn_weights none or PATH")
        _load_weights_file(model, weights)
        return Backbone(model, preprocess_for(name), int(model.output.shape[-1]))
    if name in TV_BACKBONES:
        if weights == "imagenet":
            raise ValueError(
                f"--cnn {name} has no weights to download: pass a file from "
                "training.import_original --save_backbone_weights (or none for random weights)"
            )
        model = build_tv(standard_spec(name[: -len("_tv")]), image_size)
        _load_weights_file(model, weights)
        return Backbone(model, "torch", int(model.output.shape[-1]))
    if name not in _APPS:
        raise ValueError(f"unknown --cnn {name!r}; choose one of {', '.join(BACKBONES)}")
    ctor_name, preprocess, layer = _APPS[name]
    ctor = getattr(keras.applications, ctor_name)
    kwargs: dict[str, object] = {"input_shape": (image_size, image_size, 3)}
    if layer is None:
        kwargs.update(include_top=False, pooling="avg")
    elif image_size != 224:
        raise ValueError(f"--cnn {name} uses its fc layers and needs --crop_size 224")
    if name == "mobilenet_v3_large":
        kwargs["include_preprocessing"] = True
    try:
        base = ctor(weights="imagenet" if weights == "imagenet" else None, **kwargs)
    except Exception as e:  # keras raises a bare Exception on a failed download
        if weights == "imagenet" and "fetch failure" in str(e).lower():
            raise WeightsUnavailableError(
                f"could not download the ImageNet weights of {name} ({e}). Put the weights "
                f"file in ~/.keras/models/, pass it with --cnn_weights PATH, or train from "
                f"random weights on purpose with --cnn_weights none"
            ) from e
        raise
    if weights not in ("imagenet", "none"):
        _load_weights_file(base, weights)
    model = base if layer is None else keras.Model(base.input, base.get_layer(layer).output)
    return Backbone(model, preprocess, int(model.output.shape[-1]))


def _load_weights_file(model: keras.Model, weights: str) -> None:
    if weights == "none":
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"--cnn_weights {weights}: no such file")
    model.load_weights(str(path))
    log.info("loaded backbone weights from %s", path)
