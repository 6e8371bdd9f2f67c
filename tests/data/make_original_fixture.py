"""Remake tests/data/original/: a tiny VSE++ model in the authors' formats and its torch
embeddings. Needs torch and nltk (not project dependencies):

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch nltk numpy
    PYTHONPATH=. /tmp/torchenv/bin/python tests/data/make_original_fixture.py

The network is written from the original's description (fartashf/vsepp model.py):
torchvision's ResNet layout (Bottleneck blocks, stride on the 3x3 conv, no conv bias),
wrapped in DataParallel (`cnn.module.` keys), its fc replaced by the projection; image
side: CNN, L2 norm, fc, L2 norm. Text side: embedding, a 2-layer GRU, the state at each
caption's last token, L2 norm. Captions: ASCII lower-case, NLTK Treebank tokens framed by
<start>/<end>, unknown words <unk>. Images: Resize(256), CenterCrop(224), ToTensor,
ImageNet mean/std (the fixture's images are 256 x 256, so Resize leaves them unchanged).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from nltk.tokenize import TreebankWordTokenizer
from torch import nn

from tests.original_fixture import (
    FIXTURE_CAPTIONS,
    FIXTURE_WORDS,
    fixture_images,
    legacy_checkpoint_bytes,
    namespace,
    opt_dict,
    vocab_bytes,
)

OUT = Path(__file__).parent / "original"
WIDTH, LAYERS, EMBED, WORD_DIM, GRU_LAYERS = 2, (1, 1, 1, 1), 16, 8, 2
VGG_CONFIG: tuple[int | str, ...] = (2, "M", 4, 4, "M", 4, "M", 4, "M", 4, "M")
VGG_FC = 8


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class VGG(nn.Module):
    """torchvision's VGG layout: features (3x3 convs with bias, ReLU, 2x2 pools), a 7x7
    average pool, the classifier Linear/ReLU/Dropout x2 (its last Linear removed, as the
    original does)."""

    def __init__(self, config: tuple[int | str, ...], fc: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(cin * 49, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, fc), nn.ReLU(True),
            nn.Dropout(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ResNet(nn.Module):
    def __init__(
        self, layers: tuple[int, ...], width: int, block: type[nn.Module] = Bottleneck
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for b in range(n):
                blocks.append(block(inplanes, planes, 2 if i > 0 and b == 0 else 1))
                inplanes = planes * block.expansion  # type: ignore[operator]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential()  # the original replaces torchvision's fc by nothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


class ImageEncoder(nn.Module):
    """The original's EncoderImageFull: DataParallel around a ResNet, or around a VGG's
    features only; CNN, L2 norm, fc, L2 norm unless no_imgnorm."""

    def __init__(self, kind: str = "bottleneck", no_imgnorm: bool = False) -> None:
        super().__init__()
        self.no_imgnorm = no_imgnorm
        if kind == "vgg":
            self.cnn = VGG(VGG_CONFIG, VGG_FC)
            self.cnn.features = nn.DataParallel(self.cnn.features)
            self.fc = nn.Linear(VGG_FC, EMBED)
        else:
            block = Bottleneck if kind == "bottleneck" else BasicBlock
            self.cnn = nn.DataParallel(ResNet(LAYERS, WIDTH, block))
            self.fc = nn.Linear(WIDTH * 8 * block.expansion, EMBED)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.fc(l2norm(self.cnn(images)))
        return out if self.no_imgnorm else l2norm(out)


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, WORD_DIM)
        self.rnn = nn.GRU(WORD_DIM, EMBED, GRU_LAYERS, batch_first=True)

    def forward(self, ids: list[list[int]]) -> torch.Tensor:
        out = []
        for seq in ids:  # one at a time: the last state of each caption, no padding
            h, _ = self.rnn(self.embed(torch.tensor([seq])))
            out.append(h[0, -1])
        return l2norm(torch.stack(out))


def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Every parameter and batch-norm statistic random, so none is a no-op."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype != torch.float32:
                continue
            positive = (
                "running_var",
                "bn1.weight",
                "bn2.weight",
                "bn3.weight",
                "downsample.1.weight",
            )
            if name.endswith(positive):  # variances and batch-norm scales stay positive
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3)


def encode_caption(text: str, words: list[str]) -> list[int]:
    lowered = text.translate(
        str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    )
    ids = {w: i for i, w in enumerate(words)}
    tokens = TreebankWordTokenizer().tokenize(lowered)
    return [ids["<start>"], *(ids.get(t, ids["<unk>"]) for t in tokens), ids["<end>"]]


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    img_enc, txt_enc = ImageEncoder().eval(), TextEncoder(len(FIXTURE_WORDS)).eval()
    randomise(img_enc, gen)
    randomise(txt_enc, gen)
    images = fixture_images()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = ((x[:, :, 16:240, 16:240]) - mean) / std
    ids = [encode_caption(c, FIXTURE_WORDS) for c in FIXTURE_CAPTIONS]
    with torch.no_grad():
        img_emb = img_enc(x).numpy()
        cap_emb = txt_enc(ids).numpy()
    opt = opt_dict(
        cnn_type="resnet50", embed_size=EMBED, word_dim=WORD_DIM, num_layers=GRU_LAYERS,
        vocab_size=len(FIXTURE_WORDS), logger_name="runs/fixture_vse++",
    )  # fmt: skip
    states = [img_enc.state_dict(), txt_enc.state_dict()]
    OUT.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "model": states,
        "opt": namespace(opt),
        "epoch": 7,
        "best_rsum": 123.5,
        "Eiters": 999,
    }
    torch.save(checkpoint, OUT / "zip_model_best.pth.tar")
    numpy_states = [
        OrderedDict((k, v.numpy()) for k, v in s.items() if not k.endswith("num_batches_tracked"))
        for s in states
    ]
    legacy = {"model": numpy_states, "opt": opt, "epoch": 7, "best_rsum": 123.5, "Eiters": 999}
    (OUT / "legacy_model_best.pth.tar").write_bytes(legacy_checkpoint_bytes(legacy))
    (OUT / "fixture_vocab.pkl").write_bytes(vocab_bytes(FIXTURE_WORDS))
    # Other layouts, image side only (the text side is the same): a BasicBlock ResNet
    # (resnet18/34) in the zip layout, a VGG with no_imgnorm (VSE0) in the legacy one.
    others = {}
    for kind, cnn_type, no_imgnorm in (("basic", "resnet18", False), ("vgg", "vgg16", True)):
        enc = ImageEncoder(kind, no_imgnorm).eval()
        randomise(enc, gen)
        with torch.no_grad():
            others[f"{kind}_images"] = enc(x).numpy()
        opt_k = {**opt, "cnn_type": cnn_type, "no_imgnorm": no_imgnorm}
        if kind == "basic":
            ck = {"model": [enc.state_dict(), states[1]], "opt": namespace(opt_k), "epoch": 1}
            torch.save(ck, OUT / f"{kind}_model_best.pth.tar")
        else:
            image_np = OrderedDict((k, v.numpy()) for k, v in enc.state_dict().items())
            ck = {"model": [image_np, numpy_states[1]], "opt": opt_k, "epoch": 1}
            (OUT / f"{kind}_model_best.pth.tar").write_bytes(legacy_checkpoint_bytes(ck))
    np.savez_compressed(OUT / "reference.npz", images=img_emb, captions=cap_emb, **others)
    (OUT / "reference_ids.json").write_text(json.dumps(ids) + "\n")
    print("wrote", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
