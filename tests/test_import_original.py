"""training.import_original: the VSE++ authors' checkpoints, read safely and embedded exactly.

The fixture (tests/data/original/, made by tests/data/make_original_fixture.py with torch)
is a tiny network in the original's layout saved in torch 0.3's legacy bytes and in the
zip layout, with the embeddings of a torch forward pass.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.original_fixture import (
    FIXTURE_CAPTIONS,
    FIXTURE_WORDS,
    Global,
    NewObj,
    Py2Str,
    dumps2,
    fixture_images,
    legacy_checkpoint_bytes,
    opt_dict,
    vocab_bytes,
)

DATA = Path(__file__).parent / "data" / "original"
LEGACY = DATA / "legacy_model_best.pth.tar"
ZIP = DATA / "zip_model_best.pth.tar"
VOCAB = DATA / "fixture_vocab.pkl"


def run_import(
    checkpoint: Path, vocab: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    from training.import_original import main

    capsys.readouterr()
    rc = main(["--checkpoint", str(checkpoint), "--vocab", str(vocab),
               "--save_model_path", str(out), "--log_level", "WARNING", *extra])  # fmt: skip
    return rc, capsys.readouterr().err


def png_bytes(images: np.ndarray) -> list[bytes]:
    from PIL import Image

    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert cosines(got, ref).min() >= 0.9999
    # Random networks give near-identical raw vectors: compare what is left after the mean.
    assert cosines(got - got.mean(0), ref - ref.mean(0)).min() >= 0.999


def fixture_states() -> tuple[OrderedDict[str, np.ndarray], OrderedDict[str, np.ndarray]]:
    from training.original.checkpoint import read_checkpoint

    model = read_checkpoint(LEGACY)["model"]
    return model[0], model[1]


def write_legacy(path: Path, image_state: Any, text_state: Any, **opt: Any) -> Path:
    checkpoint = {"model": [image_state, text_state], "opt": opt_dict(**opt), "epoch": 3,
                  "best_rsum": 400.0}  # fmt: skip
    path.write_bytes(legacy_checkpoint_bytes(checkpoint))
    return path


@pytest.mark.parametrize("checkpoint", [LEGACY, ZIP], ids=["legacy_torch03_py2", "zip"])
def test_imported_model_embeds_as_the_original(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.original.checkpoint import read_checkpoint
    from vsepp.model_dir import load_encoders

    rc, err = run_import(checkpoint, VOCAB, tmp_path / "m", capsys)
    assert rc == 0, err
    enc = load_encoders(tmp_path / "m")
    ref = np.load(DATA / "reference.npz")
    images = fixture_images()
    assert_close(enc.encode_image_bytes(png_bytes(images)), ref["images"])
    assert_close(enc.encode_image_arrays(images), ref["images"])
    texts, known = enc.encode_texts(FIXTURE_CAPTIONS)
    assert_close(texts, ref["captions"])
    ids = json.loads((DATA / "reference_ids.json").read_text())
    assert known.tolist() == [sum(i != 3 for i in seq[1:-1]) for seq in ids]

    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    source = manifest["imported"]
    import hashlib

    assert source["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert source["epoch"] == 7 and source["best_rsum"] == 123.5
    assert source["opt"]["cnn_type"] == "resnet50" and source["opt"]["num_layers"] == 2
    assert "test set captions" in source["warning"]
    assert manifest["text"]["pipeline"] == "original"
    assert manifest["image"]["preprocess"] == "torch"
    assert manifest["image"]["pipeline"]["resize_shorter"] == 256
    assert manifest["image"]["jpeg_min_side"] is None  # JPEGs decoded whole, as PIL does
    assert manifest["text"]["num_layers"] == 2
    assert read_checkpoint(checkpoint)["opt"].embed_size == 16


@pytest.mark.parametrize(
    ("checkpoint", "key", "cnn"),
    [("basic_model_best.pth.tar", "basic_images", "resnet_tv(block=basic"),
     ("vgg_model_best.pth.tar", "vgg_images", "vgg_tv(")],
    ids=["basicblock_resnet_zip", "vgg_vse0_legacy"],
)  # fmt: skip
def test_other_layouts_embed_images_as_the_original(
    checkpoint: str, key: str, cnn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BasicBlock ResNets (resnet18/34), and VGG with its classifier and no_imgnorm (VSE0)."""
    from vsepp.model_dir import load_encoders

    rc, err = run_import(DATA / checkpoint, VOCAB, tmp_path / "m", capsys)
    assert rc == 0, err
    enc = load_encoders(tmp_path / "m")
    assert enc.manifest["cnn"].startswith(cnn)
    ref = np.load(DATA / "reference.npz")[key]
    got = enc.encode_image_bytes(png_bytes(fixture_images()))
    assert_close(got, ref)
    # VSE0's vectors are not unit length: the norms must match too.
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-4)


def test_both_layouts_read_to_the_same_tensors() -> None:
    from training.original.checkpoint import read_checkpoint

    a, b = read_checkpoint(LEGACY), read_checkpoint(ZIP)
    for sa, sb in zip(a["model"], b["model"], strict=True):
        keys = [k for k in sb if not k.endswith("num_batches_tracked")]
        assert list(sa) == keys
        for k in keys:
            np.testing.assert_array_equal(sa[k], sb[k])
    assert vars(a["opt"]) == vars(b["opt"])


def test_vocabulary_as_script_and_module(tmp_path: Path) -> None:
    from training.original.vocab import read_vocab

    for module in ("vocab", "__main__"):
        path = tmp_path / f"{module}.pkl"
        path.write_bytes(vocab_bytes(FIXTURE_WORDS, module))
        vocab = read_vocab(path)
        assert vocab.words == FIXTURE_WORDS
        assert (vocab.pad, vocab.start, vocab.end, vocab.unk) == (0, 1, 2, 3)
    # A Python 3 pickle (the original's python3 branch) reads too.
    py3 = tmp_path / "py3.pkl"
    py3.write_bytes(vocab_bytes(FIXTURE_WORDS).replace(b"U\x05<pad>", b"X\x05\x00\x00\x00<pad>"))
    assert read_vocab(py3).words == FIXTURE_WORDS


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _zip_checkpoint(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
    return path


def _malicious_files(tmp_path: Path, marker: Path) -> list[tuple[str, Path, Path]]:
    """(expected name in the error, checkpoint, vocab) with the bad part in one of them."""
    image, text = fixture_states()
    system = Global("os", "system", (Py2Str(f"touch {marker}"),))
    legacy_evil = tmp_path / "evil_legacy.pth.tar"
    checkpoint = {"model": [image, text], "opt": opt_dict(), "epoch": system}
    legacy_evil.write_bytes(legacy_checkpoint_bytes(checkpoint))
    legacy_eval = tmp_path / "eval_legacy.pth.tar"
    code = (Py2Str(f"__import__('os').system('touch {marker}')"),)
    checkpoint = {
        "model": [image, text],
        "opt": opt_dict(),
        "epoch": Global("builtins", "eval", code),
    }
    legacy_eval.write_bytes(legacy_checkpoint_bytes(checkpoint))
    zip_evil = _zip_checkpoint(tmp_path / "evil.zip.pth.tar", pickle.dumps({"x": _Evil(marker)}))
    vocab_evil = tmp_path / "evil_vocab.pkl"
    vocab_evil.write_bytes(dumps2(system))
    vocab_class = tmp_path / "class_vocab.pkl"
    vocab_class.write_bytes(dumps2(NewObj("subprocess", "Popen", {Py2Str("args"): 1})))
    return [
        ("os.system", legacy_evil, VOCAB),
        ("builtins.eval", legacy_eval, VOCAB),
        ("system", zip_evil, VOCAB),
        ("os.system", LEGACY, vocab_evil),
        ("subprocess.Popen", LEGACY, vocab_class),
    ]


def test_malicious_pickles_are_refused_and_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.original.checkpoint import UnsafePickleError, read_checkpoint

    marker = tmp_path / "PWNED"
    for name, checkpoint, vocab in _malicious_files(tmp_path, marker):
        out = tmp_path / f"out_{checkpoint.stem}_{vocab.stem}"
        rc, err = run_import(checkpoint, vocab, out, capsys)
        assert rc == 2, err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and name in lines[0] and "allowlist" in lines[0], err
        assert not marker.exists() and not out.exists()
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        read_checkpoint(tmp_path / "evil_legacy.pth.tar")
    assert not marker.exists()


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, text = fixture_states()
    not_ckpt = tmp_path / "notes.pth.tar"
    not_ckpt.write_text("this is not a checkpoint\n")
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(LEGACY.read_bytes()[: LEGACY.stat().st_size // 2])
    truncated_zip = tmp_path / "truncated_zip.pth.tar"
    truncated_zip.write_bytes(ZIP.read_bytes()[: ZIP.stat().st_size // 2])
    small_vocab = tmp_path / "small_vocab.pkl"
    small_vocab.write_bytes(vocab_bytes(FIXTURE_WORDS[:-3]))
    densenet = write_legacy(tmp_path / "densenet.pth.tar", image, text, cnn_type="densenet121")
    vgg_named = write_legacy(tmp_path / "vgg_named.pth.tar", image, text, cnn_type="vgg19")
    cases = [
        (not_ckpt, VOCAB, "not a torch checkpoint"),
        (truncated, VOCAB, "truncated"),
        (truncated_zip, VOCAB, "truncated or damaged zip"),
        (LEGACY, small_vocab, "27 words but the checkpoint's embedding has 30 rows"),
        (densenet, VOCAB, "unsupported cnn_type 'densenet121'"),
        (vgg_named, VOCAB, "cnn_type is vgg19 but the weights are a ResNet"),
        (LEGACY, tmp_path / "missing.pkl", "no such file"),
        (VOCAB, VOCAB, "not a torch checkpoint"),
    ]
    rc, err = run_import(LEGACY, VOCAB, tmp_path / "out", capsys, "--save_backbone_weights", "b.h5")
    assert rc == 2 and "must end in .weights.h5" in err and not (tmp_path / "out").exists()
    for checkpoint, vocab, says in cases:
        out = tmp_path / "out"
        rc, err = run_import(checkpoint, vocab, out, capsys)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and says in lines[0], (checkpoint, err)
        assert not out.exists()


def _precomp_checkpoint(
    tmp_path: Path, feature_dim: int = 12
) -> tuple[Path, np.ndarray, np.ndarray]:
    _, text = fixture_states()
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.3, (16, feature_dim)).astype(np.float32)
    b = rng.normal(0, 0.1, 16).astype(np.float32)
    image = OrderedDict([("fc.weight", w), ("fc.bias", b)])
    path = write_legacy(tmp_path / "precomp.pth.tar", image, text, data_name="f30k_precomp",
                        img_dim=feature_dim, cnn_type="vgg19")  # fmt: skip
    return path, w, b


def _precomp_data(root: Path, n: int, rows_per_image: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    feats = rng.normal(0, 1, (n, 12)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "test_ims.npy", np.repeat(feats, rows_per_image, axis=0))
    caps = [FIXTURE_CAPTIONS[(i * 3 + j) % len(FIXTURE_CAPTIONS)] + f" {'a ' * j}" for i in range(n)
            for j in range(5)]  # fmt: skip
    (root / "test_caps.txt").write_bytes(("\r\n".join(caps) + "\n").encode())
    return feats


def test_precomp_run_evaluates_on_precomputed_features_and_is_not_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from index.build import main as build_main
    from training.inference import main as inference_main
    from vsepp.evaluation import evaluate
    from vsepp.model_dir import UnsearchableModelError, load_encoders

    path, w, b = _precomp_checkpoint(tmp_path)
    rc, err = run_import(path, VOCAB, tmp_path / "m", capsys)
    assert rc == 0, err
    enc = load_encoders(tmp_path / "m", purpose="evaluate")
    feats = _precomp_data(tmp_path / "one_row", 10, 1)
    _precomp_data(tmp_path / "five_rows", 10, 5)
    expected_images = feats @ w.T + b
    expected_images /= np.linalg.norm(expected_images, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.encode_features(feats), expected_images, atol=1e-5)

    caps = (tmp_path / "one_row" / "test_caps.txt").read_bytes().decode().split("\n")[:50]
    texts, _ = enc.encode_texts([c.strip() for c in caps])
    expected = evaluate(expected_images, texts, measure="cosine")
    for data in ("one_row", "five_rows"):
        out = tmp_path / f"{data}.json"
        argv = ["--checkpoint_path", str(tmp_path / "m"), "--precomp_data", str(tmp_path / data),
                "--metrics_out", str(out), "--batch_size", "4"]  # fmt: skip
        assert inference_main(argv) == 0
        got = json.loads(out.read_text())
        assert got["n_images"] == 10
        for direction in ("i2t", "t2i"):
            for key, value in expected[direction].items():
                assert got[direction][key] == pytest.approx(value), (data, direction, key)

    with pytest.raises(UnsearchableModelError, match="precomp"):
        load_encoders(tmp_path / "m")
    capsys.readouterr()
    folder = tmp_path / "photos"
    folder.mkdir()
    argv = ["--model_dir", str(tmp_path / "m"), "--images_dir", str(folder),
            "--index_dir", str(tmp_path / "index")]  # fmt: skip
    assert build_main(argv) == 2
    err = capsys.readouterr().err
    assert "precomputed" in err and "can be indexed and served" in err
    assert not (tmp_path / "index").exists()
    assert inference_main(["--checkpoint_path", str(tmp_path / "m")]) == 2
    assert "--precomp_data" in capsys.readouterr().err
    from service.__main__ import main as serve_main

    assert serve_main(["--model_dir", str(tmp_path / "m"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot be served" in err and "can be indexed and served" in err


def _flickr_layout(root: Path, images: np.ndarray) -> list[str]:
    from PIL import Image

    (root / "imgs").mkdir(parents=True)
    lines, names, caps = [], [], []
    for i, im in enumerate(images):
        name = f"im{i}.png"
        Image.fromarray(im).save(root / "imgs" / name)
        names.append(name)
        for j in range(5):
            cap = FIXTURE_CAPTIONS[(i + j) % len(FIXTURE_CAPTIONS)]
            lines.append(f"{name}#{j}\t{cap}")
            caps.append(cap)
    (root / "tokens.txt").write_text("\n".join(lines) + "\n")
    (root / "test.txt").write_text("\n".join(names) + "\n")
    return caps


def test_order_run_evaluates_with_the_order_score_and_is_not_indexed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from index.build import main as build_main
    from training.inference import main as inference_main
    from vsepp.evaluation import evaluate
    from vsepp.model_dir import UnsearchableModelError, load_encoders

    image, text = fixture_states()
    path = write_legacy(tmp_path / "order.pth.tar", image, text, cnn_type="resnet50",
                        measure="order", use_abs=True, num_layers=2)  # fmt: skip
    rc, err = run_import(path, VOCAB, tmp_path / "m", capsys)
    assert rc == 0, err
    enc = load_encoders(tmp_path / "m", purpose="evaluate")
    ref = np.load(DATA / "reference.npz")
    images = fixture_images()
    got_images = enc.encode_image_arrays(images)
    np.testing.assert_allclose(got_images, np.abs(ref["images"]), atol=1e-5)  # use_abs
    caps = _flickr_layout(tmp_path / "data", images)
    texts, _ = enc.encode_texts(caps)
    expected = evaluate(got_images, texts, measure="order")
    out = tmp_path / "metrics.json"
    argv = ["--checkpoint_path", str(tmp_path / "m"), "--images_path", str(tmp_path / "data/imgs"),
            "--texts_path", str(tmp_path / "data/tokens.txt"), "--dataset", "flickr8k",
            "--test_imgs_file_path", str(tmp_path / "data/test.txt"),
            "--metrics_out", str(out)]  # fmt: skip
    assert inference_main(argv) == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    for direction in ("i2t", "t2i"):
        for key, value in expected[direction].items():
            assert got[direction][key] == pytest.approx(value, abs=1e-6)

    with pytest.raises(UnsearchableModelError, match="order"):
        load_encoders(tmp_path / "m")
    capsys.readouterr()
    argv = ["--model_dir", str(tmp_path / "m"), "--images_dir", str(tmp_path / "data/imgs"),
            "--index_dir", str(tmp_path / "index")]  # fmt: skip
    assert build_main(argv) == 2
    assert "--measure order" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_vgg_state_dict_loads_with_the_classifier_reordered() -> None:
    """A tiny VGG state dict (old torchvision classifier indices 1 and 4) loads whole, and
    the first classifier layer over Keras' channels-last flatten equals torch's
    channels-first one."""
    from training.original.weights import cnn_state, infer_spec, load_backbone, vgg_fc6_kernel
    from training.tv_backbones import VGGSpec, build_tv

    rng = np.random.default_rng(0)
    config: list[int | str] = [4, "M", 6, 6, "M", 8, "M", 8, "M", 8, "M"]
    state: dict[str, np.ndarray] = {}
    index, cin = 0, 3
    for item in config:
        if item == "M":
            index += 1
            continue
        state[f"cnn.features.module.{index}.weight"] = rng.normal(0, 0.2, (item, cin, 3, 3))
        state[f"cnn.features.module.{index}.bias"] = rng.normal(0, 0.1, (item,))
        cin = int(item)
        index += 2
    state["cnn.classifier.1.weight"] = rng.normal(0, 0.1, (10, 8 * 49))
    state["cnn.classifier.1.bias"] = rng.normal(0, 0.1, (10,))
    state["cnn.classifier.4.weight"] = rng.normal(0, 0.1, (10, 10))
    state["cnn.classifier.4.bias"] = rng.normal(0, 0.1, (10,))
    tv = cnn_state(state)
    spec = infer_spec(tv)
    assert spec == VGGSpec(tuple(config), 10)
    load_backbone(build_tv(spec), tv)

    x = rng.normal(0, 1, (7, 7, 8))
    w = tv["classifier.0.weight"]
    np.testing.assert_allclose(
        x.reshape(-1) @ vgg_fc6_kernel(w, 8), w @ x.transpose(2, 0, 1).reshape(-1), atol=1e-9
    )


def test_tv_backbones_are_trainer_backbones(tmp_path: Path) -> None:
    from training.backbones import BACKBONES, build_backbone, preprocess_for

    assert {"resnet152_tv", "resnet18_tv", "vgg19_tv", "vgg16_tv"} <= set(BACKBONES)
    assert preprocess_for("resnet152_tv") == "torch"
    a = build_backbone("resnet18_tv", "none", 64)
    assert a.feature_dim == 512
    weights = tmp_path / "r18.weights.h5"
    a.model.save_weights(str(weights))
    b = build_backbone("resnet18_tv", str(weights), 64)
    x = np.random.default_rng(0).normal(0, 1, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(a.model(x).numpy(), b.model(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="no weights to download"):
        build_backbone("resnet152_tv", "imagenet", 224)


def _one_tensor_file(tmp_path: Path, data: np.ndarray, rebuild: tuple[Any, ...]) -> Path:
    """A legacy checkpoint holding one storage and one tensor made by `rebuild` over it."""
    from tests.original_fixture import MAGIC, Storage

    storage = Storage("1", data.astype("<f4"))
    obj = {Py2Str("t"): Global("torch._utils", "_rebuild_tensor_v2", (storage, *rebuild))}
    blob = b"".join([dumps2(MAGIC), dumps2(1001), dumps2({}), dumps2(obj), dumps2([Py2Str("1")])])
    path = tmp_path / "one.pth"
    path.write_bytes(blob + len(data).to_bytes(8, "little") + data.astype("<f4").tobytes())
    return path


def test_offsets_and_strides_are_applied_and_checked(tmp_path: Path) -> None:
    """A transposed view at an offset reads as torch would; one reaching past its storage
    is refused, not read out of bounds."""
    from training.original.checkpoint import CheckpointError, read_checkpoint

    data = np.arange(20, dtype=np.float32)
    # A 3x4 transpose of the 4x3 block starting at element 5.
    path = _one_tensor_file(tmp_path, data, (5, (3, 4), (1, 3), False, OrderedDict()))
    got = read_checkpoint(path)["t"]
    np.testing.assert_array_equal(got, data[5:17].reshape(4, 3).T)
    path = _one_tensor_file(tmp_path, data, (10, (4, 4), (4, 1), False, OrderedDict()))
    with pytest.raises(CheckpointError, match="outside its storage"):
        read_checkpoint(path)


@pytest.mark.slow
def test_trainer_fine_tunes_a_tv_backbone_from_a_weights_file(
    demo_data_dir: Path, tmp_path: Path
) -> None:
    """`--cnn resnet18_tv --cnn_weights FILE`: the path an imported backbone takes
    (training.import_original --save_backbone_weights) into further training."""
    from tests.conftest import train_flags
    from training.backbones import build_backbone
    from training.train import main

    weights = tmp_path / "r18.weights.h5"
    build_backbone("resnet18_tv", "none", 64).model.save_weights(str(weights))
    argv = [*train_flags(demo_data_dir), "--cnn", "resnet18_tv", "--cnn_weights", str(weights),
            "--crop_size", "64", "--resize_size", "64", "--joint_space", "16", "--word_dim", "8",
            "--batch_size", "50", "--epochs", "1", "--finetune",
            "--save_model_path", str(tmp_path / "m")]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["cnn"] == "resnet18_tv" and manifest["image"]["preprocess"] == "torch"


def _torchvision_view(img: np.ndarray) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(224) on a PIL image, as the original's test
    transform applies them (PIL bilinear; longer side int(); corner round())."""
    from PIL import Image

    h, w = img.shape[:2]
    nw, nh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR), np.float64)
    top, left = round((nh - 224) / 2.0), round((nw - 224) / 2.0)
    return resized[top : top + 224, left : left + 224]


@pytest.mark.parametrize("size", [(375, 500), (500, 333), (427, 640), (641, 480), (256, 300)])
def test_imported_image_view_is_torchvisions(size: tuple[int, int]) -> None:
    """The imported models' resize and crop agree with torchvision's within a grey level
    (PIL's fixed point against float), where the project's own rule may be a pixel off."""
    import tensorflow as tf

    from training.images import ImageConfig, eval_image_transform

    rng = np.random.default_rng(size[0])
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]] / max(size)
    img = 127.5 + 90 * np.stack([np.sin(9 * xx + 4 * yy + k) for k in range(3)], -1)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    want = _torchvision_view(img)
    cfg = ImageConfig(224, 256, "unit", size_rule="torchvision", jpeg_draft=False)
    got = eval_image_transform(tf.constant(img), cfg).numpy() * 255.0
    assert np.abs(got - want).max() <= 1.0 + 1e-3
    assert np.abs(got - want).mean() < 0.3
    if size == (427, 640):  # 640 * 256 / 427 = 383.7: torchvision 383, the project's rule 384
        own = eval_image_transform(tf.constant(img), ImageConfig(224, 256, "unit")).numpy()
        assert np.abs(own * 255.0 - want).mean() > 1.0
