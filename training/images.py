"""Image ops as TensorFlow functions, shared by the input pipeline and the exported encoder.

The decoding, resizing and cropping ops are pure TensorFlow, so the very same ops run in
`tf.data` during training and evaluation and inside the exported image encoder SavedModel:
serving sees exactly the pixels evaluation saw. One step is Python: `read_canonical` reads a
file through `tf.numpy_function` (Pillow's canonical form, `vsepp.images`), in `tf.data`
only; the exported encoder takes the canonical bytes. `normalize` is the one place a
backbone's own normalisation is applied.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from vsepp.images import read_image_file

PREPROCESS_MODES = ("caffe", "torch", "tf", "none", "unit")
SIZE_RULES = ("project", "torchvision")
# How a training view is cut: the original's RandomResizedCrop (fartashf/vsepp data.py) or
# the seed's resize-shorter-side-then-random-crop.
TRAIN_TRANSFORMS = ("random_resized_crop", "resize_crop")
# torchvision.transforms.RandomResizedCrop's defaults, which the original uses.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10

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
    train_transform: str = "resize_crop"  # one of TRAIN_TRANSFORMS (evaluation never changes)
    # "project": the longer side rounded, the crop's corner floored; "torchvision": as
    # Resize/CenterCrop do (longer side truncated, corner rounded half to even), for the
    # VSE++ authors' imported models.
    size_rule: str = "project"
    jpeg_draft: bool = True  # decode large JPEGs at a DCT scale (False: full size, as PIL)

    def __post_init__(self) -> None:
        if self.train_transform not in TRAIN_TRANSFORMS:
            raise ValueError(
                f"ImageConfig.train_transform must be one of {TRAIN_TRANSFORMS}, "
                f"got {self.train_transform!r}"
            )
        if self.size_rule not in SIZE_RULES:
            raise ValueError(
                f"ImageConfig.size_rule must be one of {SIZE_RULES}, got {self.size_rule!r}"
            )
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
            str(d.get("train_transform", "resize_crop")),
            str(d.get("size_rule", "project")),
            bool(d.get("jpeg_draft", True)),
        )


def read_canonical(path: tf.Tensor, min_side: int | None = None) -> tf.Tensor:
    """tf.string path -> the file's bytes in the one canonical form (`vsepp.images`).

    The very function indexing and serving use, so training sees EXIF-upright, alpha-on-white
    pixels like they do; `min_side` as the exported encoder's `jpeg_min_side` where the view
    is resized to it (evaluation, the seed's crop). An unusable file raises (tf.data's error
    handling then applies).
    """
    read = functools.partial(_read_canonical, min_side=min_side)
    data = tf.numpy_function(read, [path], tf.string, stateful=False)
    data.set_shape([])
    return data


def _read_canonical(path: bytes, min_side: int | None) -> np.ndarray:
    return np.asarray(read_image_file(os.fsdecode(path), min_side=min_side), dtype=object)


def decode_image(contents: tf.Tensor, min_side: int | None = None) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, GIF first frame, BMP) -> uint8 [H, W, 3].

    Grayscale is replicated to RGB; an alpha channel is dropped (as PIL's convert("RGB") does).
    With `min_side`, a JPEG is decoded at the smallest of libjpeg's DCT scales (1/1, 1/2,
    1/4, 1/8) whose shorter side is still >= `min_side` (`jpeg_scale`): a 12-megapixel
    photo that is resized to 256 anyway decodes in a fraction of the time, and every view
    made by `resize_shorter(..., min_side)` stays within a few grey levels of the full
    decode's. Raises InvalidArgumentError on data that is not a readable image.
    """
    if min_side is None:
        image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    else:
        image = tf.cond(
            tf.io.is_jpeg(contents),
            lambda: _decode_jpeg_scaled(contents, min_side),
            lambda: tf.io.decode_image(
                contents, channels=3, dtype=tf.uint8, expand_animations=False
            ),
        )
    image.set_shape([None, None, 3])
    return image


JPEG_SCALES = (1, 2, 4, 8)  # the denominators libjpeg decodes to directly


def jpeg_scale(height: tf.Tensor, width: tf.Tensor, min_side: int) -> tf.Tensor:
    """Index into JPEG_SCALES of the largest denominator that keeps the shorter side (which
    libjpeg rounds up: ceil(side / r)) >= `min_side`; int32 scalar."""
    shorter = tf.minimum(height, width)
    fits = [tf.cast((shorter + r - 1) // r >= min_side, tf.int32) for r in JPEG_SCALES[1:]]
    return tf.add_n(fits)


def _decode_jpeg_scaled(contents: tf.Tensor, min_side: int) -> tf.Tensor:
    shape = tf.io.extract_jpeg_shape(contents)
    branches = [(lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r)) for r in JPEG_SCALES]
    return tf.switch_case(jpeg_scale(shape[0], shape[1], min_side), branches)


def resize_shorter(image: tf.Tensor, size: int, rule: str = "project") -> tf.Tensor:
    """Resize so the shorter side is `size`, keeping the aspect ratio; uint8 [..., h, w, 3].

    Works on one image [H, W, 3] or a batch [n, H, W, 3]. The result is rounded back to uint8
    so a cache of resized images is four times smaller than float32. The longer side is
    rounded, or truncated with `rule` "torchvision" (its Resize computes int(size * L / S)).
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[-3], tf.float64), tf.cast(shape[-2], tf.float64)
    s = tf.constant(size, tf.float64)
    to_int = tf.floor if rule == "torchvision" else tf.round
    # The shorter side is set exactly rather than rounded, so it can never come out at size-1.
    new_h = tf.where(h <= w, s, to_int(h * s / w))
    new_w = tf.where(h <= w, to_int(w * s / h), s)
    new_size = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    # Antialiasing matters when shrinking photos several-fold (PIL and torchvision do it too).
    resized = tf.image.resize(image, new_size, method="bilinear", antialias=True)
    out = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    out.set_shape(image.shape[:-3].concatenate([None, None, 3]))
    return out


def center_crop(image: tf.Tensor, size: int, rule: str = "project") -> tf.Tensor:
    """The centred `size` x `size` window of [..., H, W, C] (H, W >= size).

    An odd margin puts the extra pixel below/right; with `rule` "torchvision" the corner is
    Python's round(margin / 2), half to even, as its CenterCrop does.
    """
    shape = tf.shape(image)

    def corner(margin: tf.Tensor) -> tf.Tensor:
        if rule != "torchvision":
            return margin // 2
        half = margin // 2
        # margin odd: round(half + 0.5) to the even one of half, half + 1.
        return tf.where((margin % 2 == 1) & (half % 2 == 1), half + 1, half)

    top = corner(shape[-3] - size)
    left = corner(shape[-2] - size)
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


def random_resized_crop_box(
    height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """torchvision's `RandomResizedCrop.get_params` as stateless graph ops: (top, left, h, w).

    Up to 10 draws of an area fraction in [0.08, 1] and a log-uniform aspect ratio in
    [3/4, 4/3]; the first draw whose box fits the image wins (all 10 are drawn at once, so
    the loop becomes a vector op), else the centred box of the whole image with its ratio
    clamped to that range. The box's corner is then uniform over the places it fits.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    h_f, w_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    area = h_f * w_f
    frac = tf.random.stateless_uniform(
        [RRC_ATTEMPTS], seeds[0], RRC_SCALE[0], RRC_SCALE[1], tf.float64
    )
    log_r = tf.random.stateless_uniform(
        [RRC_ATTEMPTS], seeds[1], np.log(RRC_RATIO[0]), np.log(RRC_RATIO[1]), tf.float64
    )
    ratio = tf.exp(log_r)
    # Python's round() halves to even, as torchvision's int(round(...)) does.
    ws = tf.cast(tf.round(tf.sqrt(area * frac * ratio)), tf.int32)
    hs = tf.cast(tf.round(tf.sqrt(area * frac / ratio)), tf.int32)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    # Fallback: the whole image, its aspect ratio clamped to the range, centred.
    in_ratio = w_f / h_f
    fb_w = tf.where(in_ratio > RRC_RATIO[1], tf.cast(tf.round(h_f * RRC_RATIO[1]), tf.int32), width)
    fb_h = tf.where(
        in_ratio < RRC_RATIO[0], tf.cast(tf.round(w_f / RRC_RATIO[0]), tf.int32), height
    )
    found = tf.reduce_any(fits)
    h = tf.where(found, hs[first], fb_h)
    w = tf.where(found, ws[first], fb_w)
    # torchvision's randint(0, H - h + 1) is uniform over 0..H-h inclusive.
    corner = tf.random.stateless_uniform(
        [2], seeds[2], minval=0, maxval=tf.int32.max, dtype=tf.int32
    )
    top = tf.where(found, corner[0] % (height - h + 1), (height - h) // 2)
    left = tf.where(found, corner[1] % (width - w + 1), (width - w) // 2)
    return top, left, h, w


def random_resized_crop_flip(
    image: tf.Tensor, size: int, seed: tf.Tensor, flip: bool = True
) -> tf.Tensor:
    """The original's training view: `RandomResizedCrop(size)` then (if `flip`) a random
    horizontal flip, of one uint8 image [H, W, 3]; float32 [size, size, 3] on the 0..255 scale.

    Stateless like `random_crop_flip`. The box is resized bilinearly (antialiased when it
    shrinks, as PIL does) to `size` x `size`.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    shape = tf.shape(image)
    top, left, h, w = random_resized_crop_box(shape[0], shape[1], seeds[0])
    box = image[top : top + h, left : left + w, :]
    out = tf.image.resize(box, [size, size], method="bilinear", antialias=True)
    out.set_shape([size, size, 3])
    if not flip:
        return out
    return tf.image.stateless_random_flip_left_right(out, seed=seeds[1])


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


def train_needs_resize(cfg: ImageConfig) -> bool:
    """Whether the training view is cut from the `resize_shorter` image (the seed's scheme)
    rather than from the decoded image itself (RandomResizedCrop, as the original)."""
    return cfg.train_transform == "resize_crop"


def train_image_transform(image: tf.Tensor, cfg: ImageConfig, seed: tf.Tensor) -> tf.Tensor:
    """Training view of one uint8 image [H, W, 3]: float32 [S, S, 3].

    `resize_crop` expects the image already resized by `resize_shorter` and takes a random
    S x S window; `random_resized_crop` takes any image (the decoded file, or a cached
    resized one) and resizes a random box of it to S x S. Both flip unless `cfg.hflip` is off.
    """
    if cfg.train_transform == "random_resized_crop":
        view = random_resized_crop_flip(image, cfg.image_size, seed, cfg.hflip)
    else:
        view = random_crop_flip(image, cfg.image_size, seed, cfg.hflip)
    return normalize(view, cfg.preprocess)


def eval_image_transform(image: tf.Tensor, cfg: ImageConfig) -> tf.Tensor:
    """Evaluation and serving view: resize shorter side, centre crop, normalise.

    uint8 [H, W, 3] -> float32 [S, S, 3], or a batch [n, H, W, 3] -> [n, S, S, 3].
    """
    resized = resize_shorter(image, cfg.resize_size, cfg.size_rule)
    return normalize(center_crop(resized, cfg.image_size, cfg.size_rule), cfg.preprocess)


def eval_view(contents: tf.Tensor, cfg: ImageConfig) -> tf.Tensor:
    """One encoded image tf.string [] -> float32 [S, S, 3], as evaluation and serving see it
    (a large JPEG decoded at the DCT scale `resize_shorter` needs, see `decode_image`)."""
    return eval_image_transform(decode_image(contents, jpeg_min_side(cfg)), cfg)


def jpeg_min_side(cfg: ImageConfig) -> int | None:
    """The shorter side large JPEGs are decoded down to (None: full size)."""
    return cfg.resize_size if cfg.jpeg_draft else None


def eval_images_from_bytes(contents: tf.Tensor, cfg: ImageConfig) -> tf.Tensor:
    """Encoded images tf.string [n] -> float32 [n, S, S, 3], as evaluation sees them."""
    s = cfg.image_size
    return tf.map_fn(
        lambda c: eval_view(c, cfg),
        contents,
        fn_output_signature=tf.TensorSpec([s, s, 3], tf.float32),
    )
