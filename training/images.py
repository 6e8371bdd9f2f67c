"""Image ops as pure TensorFlow functions, shared by the input pipeline and the exported encoder.

Everything here is graph-safe (no `py_function`), so the very same ops run in `tf.data` during
training and evaluation and inside the exported image encoder SavedModel: serving sees exactly
the pixels evaluation saw. `normalize` is the one place a backbone's own normalisation is
applied.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from vsepp.images import read_image_file

PREPROCESS_MODES = ("caffe", "torch", "tf", "none", "unit")

# ImageNet statistics as keras.applications uses them: per-channel means in BGR order for the
# Caffe-trained weights, RGB mean/std on the [0, 1] scale for the PyTorch-style ones.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageConfig:
    """How an image becomes backbone input; recorded in the model manifest under "image"."""

    image_size: int = 224  # side of the square crop fed to the backbone (the paper's 224)
    resize_size: int = 256  # the shorter side is resized to this before cropping
    preprocess: str = "caffe"  # backbone normalisation rule, one of PREPROCESS_MODES
    hflip: bool = True  # random horizontal flips in training (off when captions say left/right)

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(
                f"ImageConfig.preprocess must be one of {PREPROCESS_MODES}, got {self.preprocess!r}"
            )
        if self.image_size < 1:
            raise ValueError(f"ImageConfig.image_size must be positive, got {self.image_size}")
        if self.resize_size < self.image_size:
            raise ValueError(
                f"ImageConfig.resize_size ({self.resize_size}) must be >= image_size "
                f"({self.image_size}): the crop is taken from the resized image"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageConfig:
        return cls(
            int(d["image_size"]),
            int(d["resize_size"]),
            str(d["preprocess"]),
            bool(d.get("hflip", True)),
        )


def read_canonical(path: tf.Tensor) -> tf.Tensor:
    """tf.string path -> the file's bytes in the one canonical form (`vsepp.images`).

    The very function indexing and serving use, so training sees EXIF-upright, alpha-on-white
    pixels like they do. An unusable file raises (tf.data's error handling then applies).
    """
    data = tf.numpy_function(_read_canonical, [path], tf.string, stateful=False)
    data.set_shape([])
    return data


def _read_canonical(path: bytes) -> np.ndarray:
    return np.asarray(read_image_file(os.fsdecode(path)), dtype=object)


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, GIF first frame, BMP) -> uint8 [H, W, 3].

    Grayscale is replicated to RGB; an alpha channel is dropped (as PIL's convert("RGB") does).
    Raises InvalidArgumentError on data that is not a readable image.
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_shorter(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize so the shorter side is `size`, keeping the aspect ratio; uint8 [..., h, w, 3].

    Works on one image [H, W, 3] or a batch [n, H, W, 3]. The result is rounded back to uint8
    so a cache of resized images is four times smaller than float32.
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[-3], tf.float64), tf.cast(shape[-2], tf.float64)
    s = tf.constant(size, tf.float64)
    # The shorter side is set exactly rather than rounded, so it can never come out at size-1.
    new_h = tf.where(h <= w, s, tf.round(h * s / w))
    new_w = tf.where(h <= w, tf.round(w * s / h), s)
    new_size = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    # Antialiasing matters when shrinking photos several-fold (PIL and torchvision do it too).
    resized = tf.image.resize(image, new_size, method="bilinear", antialias=True)
    out = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    out.set_shape(image.shape[:-3].concatenate([None, None, 3]))
    return out


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The centred `size` x `size` window of [..., H, W, C] (H, W >= size)."""
    shape = tf.shape(image)
    top = (shape[-3] - size) // 2
    left = (shape[-2] - size) // 2
    out = image[..., top : top + size, left : left + size, :]
    out.set_shape(image.shape[:-3].concatenate([size, size, image.shape[-1]]))
    return out


def random_crop_flip(image: tf.Tensor, size: int, seed: tf.Tensor, flip: bool = True) -> tf.Tensor:
    """Random `size` square crop and (if `flip`) random horizontal flip of one image [H, W, 3].

    Stateless: the result depends only on `seed` (int [2]), so a parallel map stays
    repeatable whatever order its calls run in.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    crop = tf.image.stateless_random_crop(image, [size, size, 3], seed=seeds[0])
    if not flip:
        return crop
    return tf.image.stateless_random_flip_left_right(crop, seed=seeds[1])


def normalize(image: tf.Tensor, preprocess: str) -> tf.Tensor:
    """Pixels 0..255 (any dtype) -> float32 in the backbone's expected input range.

    caffe: RGB->BGR minus the ImageNet mean (keras ResNet/VGG); torch: /255 then ImageNet
    mean/std; tf: [-1, 1] (keras MobileNetV2, Inception); none: unchanged 0..255 (backbones
    with their own preprocessing layer, e.g. keras MobileNetV3); unit: [0, 1] (the tiny CNN).
    """
    x = tf.cast(image, tf.float32)
    if preprocess == "caffe":
        return x[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR, tf.float32)
    if preprocess == "torch":
        return (x / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)
    if preprocess == "tf":
        return x / 127.5 - 1.0
    if preprocess == "none":
        return x
    if preprocess == "unit":
        return x / 255.0
    raise ValueError(f"unknown preprocess {preprocess!r}; expected one of {PREPROCESS_MODES}")


def train_image_transform(resized: tf.Tensor, cfg: ImageConfig, seed: tf.Tensor) -> tf.Tensor:
    """Training view of an image already resized by `resize_shorter`: float32 [S, S, 3]."""
    return normalize(random_crop_flip(resized, cfg.image_size, seed, cfg.hflip), cfg.preprocess)


def eval_image_transform(image: tf.Tensor, cfg: ImageConfig) -> tf.Tensor:
    """Evaluation and serving view: resize shorter side, centre crop, normalise.

    uint8 [H, W, 3] -> float32 [S, S, 3], or a batch [n, H, W, 3] -> [n, S, S, 3].
    """
    resized = resize_shorter(image, cfg.resize_size)
    return normalize(center_crop(resized, cfg.image_size), cfg.preprocess)


def eval_images_from_bytes(contents: tf.Tensor, cfg: ImageConfig) -> tf.Tensor:
    """Encoded images tf.string [n] -> float32 [n, S, S, 3], as evaluation sees them."""
    s = cfg.image_size
    return tf.map_fn(
        lambda c: eval_image_transform(decode_image(c), cfg),
        contents,
        fn_output_signature=tf.TensorSpec([s, s, 3], tf.float32),
    )
