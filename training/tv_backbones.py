"""torchvision's ResNet and VGG in Keras, layer for layer, so torch weights load exactly.

Keras' own ResNet is another network for the same tensors: it strides the first 1x1 conv
of a block (torchvision strides the 3x3), has conv biases and batch-norm eps 1.001e-5
(torchvision: none, 1e-5). Padding is explicit (ZeroPadding2D then 'valid') because Keras'
'same' pads a strided conv more on the bottom/right, torchvision symmetrically. Layer
names are torchvision's module paths with '.' as '_' (`layer1_0_conv2`), which is how
`training.original.weights` finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

BN_EPS = 1e-5

# torchvision's block counts per stage.
RESNET_LAYERS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
# torchvision's VGG feature configs: channels of each 3x3 conv, "M" a 2x2 max-pool.
_V16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_V19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", *(512,) * 4, "M", *(512,) * 4, "M")
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {"vgg16": _V16, "vgg19": _V19}
VGG_FC = 4096


@dataclass(frozen=True)
class ResNetSpec:
    """A torchvision ResNet: block kind, blocks per stage, width of the stem (64)."""

    block: str  # "basic" or "bottleneck"
    layers: tuple[int, ...]
    width: int = 64

    @property
    def feature_dim(self) -> int:
        return self.width * 8 * (4 if self.block == "bottleneck" else 1)


@dataclass(frozen=True)
class VGGSpec:
    """A torchvision VGG: the features config and the classifier's hidden width."""

    config: tuple[int | str, ...]
    fc: int = VGG_FC

    @property
    def feature_dim(self) -> int:
        return self.fc


def standard_spec(name: str) -> ResNetSpec | VGGSpec:
    """The spec of torchvision model `name` (resnet18..152, vgg16, vgg19)."""
    if name in RESNET_LAYERS:
        block, layers = RESNET_LAYERS[name]
        return ResNetSpec(block, layers)
    if name in VGG_CONFIGS:
        return VGGSpec(VGG_CONFIGS[name])
    known = ", ".join([*RESNET_LAYERS, *VGG_CONFIGS])
    raise ValueError(f"unsupported cnn_type {name!r}; supported: {known}")


def _conv(x: keras.KerasTensor, filters: int, k: int, stride: int, name: str) -> keras.KerasTensor:
    pad = k // 2
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, k, stride, "valid", use_bias=False, name=name)(x)


def _bn(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return keras.layers.BatchNormalization(epsilon=BN_EPS, name=name)(x)


def _block(
    x: keras.KerasTensor, kind: str, planes: int, stride: int, name: str
) -> keras.KerasTensor:
    out_ch = planes * (4 if kind == "bottleneck" else 1)
    shortcut = x
    if stride != 1 or int(x.shape[-1]) != out_ch:
        shortcut = keras.layers.Conv2D(
            out_ch, 1, stride, use_bias=False, name=f"{name}_downsample_0"
        )(x)
        shortcut = _bn(shortcut, f"{name}_downsample_1")
    if kind == "bottleneck":
        y = keras.layers.ReLU()(_bn(_conv(x, planes, 1, 1, f"{name}_conv1"), f"{name}_bn1"))
        y = keras.layers.ReLU()(_bn(_conv(y, planes, 3, stride, f"{name}_conv2"), f"{name}_bn2"))
        y = _bn(_conv(y, out_ch, 1, 1, f"{name}_conv3"), f"{name}_bn3")
    else:
        y = keras.layers.ReLU()(_bn(_conv(x, planes, 3, stride, f"{name}_conv1"), f"{name}_bn1"))
        y = _bn(_conv(y, planes, 3, 1, f"{name}_conv2"), f"{name}_bn2")
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def tv_resnet(spec: ResNetSpec, image_size: int = 224, name: str = "tv_resnet") -> keras.Model:
    """torchvision's ResNet up to its global average pool: [B, S, S, 3] -> [B, feature_dim]."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv(inputs, spec.width, 7, 2, "conv1")
    x = keras.layers.ReLU()(_bn(x, "bn1"))
    # Zero padding equals torch's -inf padding here: the input is non-negative after ReLU.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool")(x)
    for stage, blocks in enumerate(spec.layers):
        planes = spec.width * 2**stage
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            x = _block(x, spec.block, planes, stride, f"layer{stage + 1}_{b}")
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inputs, x, name=name)


def tv_vgg(spec: VGGSpec, image_size: int = 224, name: str = "tv_vgg") -> keras.Model:
    """torchvision's VGG up to the classifier's second ReLU (fc7): [B, 224, 224, 3] -> [B, fc].

    Needs the 7x7 map the classifier was trained on, so image_size 224.
    """
    if image_size != 224:
        raise ValueError(f"VGG uses its classifier and needs 224 x 224 input, not {image_size}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for i, item in enumerate(spec.config):
        if item == "M":
            continue
        # torchvision numbers features as conv, relu[, pool]; keep its indices in the names.
        index = _vgg_index(spec.config, i)
        x = keras.layers.ZeroPadding2D(1, name=f"features_{index}_pad")(x)
        x = keras.layers.Conv2D(int(item), 3, name=f"features_{index}")(x)
        x = keras.layers.ReLU()(x)
        if i + 1 < len(spec.config) and spec.config[i + 1] == "M":
            x = keras.layers.MaxPooling2D(2, 2)(x)
    # Channels-last flattening; the loader reorders the first classifier layer to match.
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(spec.fc, activation="relu", name="classifier_0")(x)
    x = keras.layers.Dense(spec.fc, activation="relu", name="classifier_3")(x)
    return keras.Model(inputs, x, name=name)


def _vgg_index(config: tuple[int | str, ...], position: int) -> int:
    """torchvision's index in `features` of the conv at `position` of `config`."""
    index = 0
    for item in config[:position]:
        index += 1 if item == "M" else 2
    return index


def build_tv(spec: ResNetSpec | VGGSpec, image_size: int = 224) -> keras.Model:
    """The Keras model of a torchvision ResNet or VGG spec."""
    if isinstance(spec, ResNetSpec):
        return tv_resnet(spec, image_size)
    return tv_vgg(spec, image_size)
