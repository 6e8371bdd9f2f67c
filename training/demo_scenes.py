"""Scenes and captions of the built-in synthetic demo dataset (the drawing is in demo_data).

A scene holds 1-3 objects (shape, colour, size) laid out in a row (left to right) or a
column (top to bottom). Every caption names each object's size, colour and shape and, for
2-3 objects, the relation of each neighbouring pair, so retrieval needs attributes and
relations. Some scenes are single-attribute edits of earlier ones: hard negatives.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

# Hues far apart, so that each colour stays its nearest palette entry after JPEG at 64 px
# on the dark background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 180, 60),
    "cyan": (40, 215, 225),
    "blue": (45, 85, 240),
    "purple": (160, 60, 215),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# Side of an object's bounding square on a 64-px canvas (scaled with the image size); the
# ratio near 2 keeps "large" and "small" apart at a glance.
SIZES: dict[str, float] = {"large": 16.0, "small": 9.0}
REFERENCE_SIZE = 64.0
MARGIN = 2.0  # free border of the canvas, reference pixels
GAP = 5.0  # least free space between neighbouring objects, reference pixels
JITTER = 3.0  # off-axis wobble of each object; far below the on-axis spacing of >= 14 px
RGB_JITTER = 10  # per-channel colour wobble, far below the palette distances

SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "large": ("large", "big", "huge"),
    "small": ("small", "little", "tiny"),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "white": ("white",),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus"),
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath", "underneath"),
}
# Relation of an object to the next one along the layout axis, and the reverse.
FORWARD = {"row": "left", "column": "above"}
BACKWARD = {"row": "right", "column": "below"}
LAYOUTS = ("single", "row", "column")
EDITS = ("colour", "shape", "size", "order", "axis")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object; geometry in pixels of the output image."""

    shape: str
    colour: str
    size: str
    rgb: tuple[int, int, int]  # the colour actually drawn (palette colour plus a wobble)
    center: tuple[float, float] = (0.0, 0.0)  # (x, y), x to the right, y down
    extent: float = 0.0  # side of the bounding square

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.size, self.colour, self.shape)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        h = self.extent / 2
        return (self.center[0] - h, self.center[1] - h, self.center[0] + h, self.center[1] + h)

    def describe(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects in reading order: left to right for a row, top to bottom for a column."""

    layout: str  # "single", "row" or "column"
    objects: tuple[SceneObject, ...]
    edit_of: int | None = None  # index, in the same split, of the scene this one edits
    edit: str | None = None  # which attribute the edit changed (one of EDITS)

    def canonical(self) -> str:
        """The scene's description with one word per attribute and relation."""
        if self.layout == "single":
            return self.objects[0].describe()
        joint = " left of " if self.layout == "row" else " above "
        return joint.join(o.describe() for o in self.objects)


def _jitter_rgb(colour: str, rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-RGB_JITTER, RGB_JITTER))) for c in COLOURS[colour])
    return (r, g, b)


class SceneSampler:
    """Draws fresh scenes and single-attribute edits of scenes, reproducibly from `rng`."""

    def __init__(
        self,
        rng: random.Random,
        image_size: int,
        object_weights: Sequence[float] = (0.08, 0.42, 0.5),
    ) -> None:
        if len(object_weights) != 3 or min(object_weights) < 0 or sum(object_weights) <= 0:
            raise ValueError(f"object_weights must be 3 non-negative weights: {object_weights}")
        self.rng = rng
        self.scale = image_size / REFERENCE_SIZE
        self.image_size = float(image_size)
        self.object_weights = tuple(object_weights)

    def fresh(self) -> Scene:
        """A new scene of 1-3 objects with pairwise different attribute triples."""
        rng = self.rng
        n = rng.choices((1, 2, 3), weights=self.object_weights)[0]
        seen: set[tuple[str, str, str]] = set()
        objects: list[SceneObject] = []
        while len(objects) < n:
            shape, colour = rng.choice(SHAPES), rng.choice(tuple(COLOURS))
            size = rng.choice(tuple(SIZES))
            if (size, colour, shape) in seen:
                continue
            seen.add((size, colour, shape))
            objects.append(SceneObject(shape, colour, size, _jitter_rgb(colour, rng)))
        layout = "single" if n == 1 else rng.choice(("row", "column"))
        return Scene(layout, self.place(objects, layout))

    def edit(self, scene: Scene, index: int) -> Scene | None:
        """`scene` with one attribute changed, or None when the edit would repeat an object."""
        rng = self.rng
        objects = list(scene.objects)
        kinds = EDITS if len(objects) > 1 else EDITS[:3]
        kind = rng.choice(kinds)
        layout = scene.layout
        i = rng.randrange(len(objects))
        old = objects[i]
        if kind == "colour":
            colour = rng.choice([c for c in COLOURS if c != old.colour])
            objects[i] = replace(old, colour=colour, rgb=_jitter_rgb(colour, rng))
        elif kind == "shape":
            objects[i] = replace(old, shape=rng.choice([s for s in SHAPES if s != old.shape]))
        elif kind == "size":
            objects[i] = replace(old, size="small" if old.size == "large" else "large")
        elif kind == "order":
            j = rng.choice([k for k in range(len(objects)) if k != i])
            objects[i], objects[j] = objects[j], objects[i]
        else:
            layout = "column" if layout == "row" else "row"
        if len({o.attributes for o in objects}) < len(objects):
            return None
        # Colour and shape edits keep the geometry, so the pair differs in nothing else.
        if kind in ("size", "order", "axis"):
            placed = self.place(objects, layout)
        else:
            placed = tuple(objects)
        return Scene(layout, placed, edit_of=index, edit=kind)

    def place(self, objects: Sequence[SceneObject], layout: str) -> tuple[SceneObject, ...]:
        """Positions for `objects` in reading order, apart by at least GAP along the axis."""
        rng, s, side = self.rng, self.scale, self.image_size
        extents = [SIZES[o.size] * s for o in objects]
        margin, gap, jitter = MARGIN * s, GAP * s, JITTER * s
        if layout == "single":
            h = extents[0] / 2
            x = rng.uniform(margin + h, side - margin - h)
            y = rng.uniform(margin + h, side - margin - h)
            return (replace(objects[0], center=(round(x, 2), round(y, 2)), extent=extents[0]),)
        free = side - 2 * margin - sum(extents) - (len(objects) - 1) * gap
        if free < 0:
            raise ValueError(f"image size {side:g} is too small for {len(objects)} objects")
        # Split the free space at random into the n + 1 gaps around the objects.
        cuts = sorted(rng.random() for _ in objects)
        shares = [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=True)]
        half_max = max(extents) / 2
        base = rng.uniform(margin + half_max + jitter, side - margin - half_max - jitter)
        placed = []
        along = margin + shares[0] * free
        for obj, extent, share in zip(objects, extents, shares[1:], strict=True):
            a = round(along + extent / 2, 2)
            b = round(base + rng.uniform(-jitter, jitter), 2)
            center = (a, b) if layout == "row" else (b, a)
            placed.append(replace(obj, center=center, extent=extent))
            along += extent + gap + share * free
        return tuple(placed)


def sample_scenes(
    n: int,
    rng: random.Random,
    image_size: int,
    *,
    edit_fraction: float = 0.3,
    object_weights: Sequence[float] = (0.08, 0.42, 0.5),
    max_tries: int = 200,
) -> list[Scene]:
    """`n` scenes whose canonical descriptions differ while the description space allows.

    A share `edit_fraction` of them are single-attribute edits of an earlier scene.
    """
    sampler = SceneSampler(rng, image_size, object_weights)
    scenes: list[Scene] = []
    used: set[str] = set()
    for _ in range(n):
        scene: Scene | None = None
        if scenes and rng.random() < edit_fraction:
            for _ in range(20):
                base = rng.randrange(len(scenes))
                candidate = sampler.edit(scenes[base], base)
                if candidate is not None and candidate.canonical() not in used:
                    scene = candidate
                    break
        if scene is None:
            for _ in range(max_tries):
                scene = sampler.fresh()
                if scene.canonical() not in used:
                    break
        assert scene is not None
        used.add(scene.canonical())
        scenes.append(scene)
    return scenes


# --- captions -----------------------------------------------------------------------------


def _np(obj: SceneObject, rng: random.Random, det: str = "a") -> str:
    """A noun phrase naming size, colour and shape, with synonyms and two word orders."""
    size = rng.choice(SIZE_WORDS[obj.size])
    colour = rng.choice(COLOUR_WORDS[obj.colour])
    shape = rng.choice(SHAPE_WORDS[obj.shape])
    words = f"{size} {shape} in {colour}" if rng.random() < 0.2 else f"{size} {colour} {shape}"
    if det == "a" and words[0] in "aeiou":
        det = "an"
    return f"{det} {words}".strip()


def _rel(relation: str, rng: random.Random) -> str:
    return rng.choice(RELATION_WORDS[relation])


Template = Callable[[Scene, random.Random], str]


def _single(fmt: str) -> Template:
    def make(scene: Scene, rng: random.Random) -> str:
        obj = scene.objects[0]
        return fmt.format(s=_np(obj, rng), bare=_np(obj, rng, det=""))

    return make


def _pair(fmt: str) -> Template:
    def make(scene: Scene, rng: random.Random) -> str:
        first, second = scene.objects
        if rng.random() < 0.5:
            s, r, o = first, FORWARD[scene.layout], second
        else:
            s, r, o = second, BACKWARD[scene.layout], first
        return fmt.format(s=_np(s, rng), r=_rel(r, rng), o=_np(o, rng))

    return make


def _chain(fmt: str) -> Template:
    """Three objects as one monotone chain: "A left of B which is left of C"."""

    def make(scene: Scene, rng: random.Random) -> str:
        objs, relation = list(scene.objects), FORWARD[scene.layout]
        if rng.random() < 0.5:
            objs, relation = objs[::-1], BACKWARD[scene.layout]
        a, b, c = (_np(o, rng) for o in objs)
        return fmt.format(a=a, b=b, c=c, r1=_rel(relation, rng), r2=_rel(relation, rng))

    return make


def _claims(fmt: str) -> Template:
    """Three objects as two claims about neighbouring pairs, each in either direction."""

    def make(scene: Scene, rng: random.Random) -> str:
        o0, o1, o2 = scene.objects
        pairs = [(o0, o1), (o1, o2)]
        rng.shuffle(pairs)
        parts: dict[str, str] = {}
        named: set[int] = set()
        for k, (p, q) in enumerate(pairs, start=1):
            if rng.random() < 0.5:
                x, r, y = p, FORWARD[scene.layout], q
            else:
                x, r, y = q, BACKWARD[scene.layout], p
            # The object both claims share is "a ..." the first time and "the ..." after.
            parts[f"x{k}"] = _np(x, rng, "the" if id(x) in named else "a")
            parts[f"y{k}"] = _np(y, rng, "the" if id(y) in named else "a")
            named.update((id(x), id(y)))
            parts[f"r{k}"] = _rel(r, rng)
        return fmt.format(**parts)

    return make


# Each template has its own fixed words, so five different templates give five captions.
TEMPLATES: dict[int, tuple[Template, ...]] = {
    1: tuple(
        _single(f)
        for f in (
            "{s}",
            "there is {s}",
            "a picture of {s}",
            "an image with {s}",
            "a single {bare}",
            "{s} on a dark background",
            "{s} on its own",
            "we see {s}",
            "just one {bare}",
        )
    ),
    2: tuple(
        _pair(f)
        for f in (
            "{s} {r} {o}",
            "{s} is {r} {o}",
            "there is {s} {r} {o}",
            "{s} sits {r} {o}",
            "a picture of {s} {r} {o}",
            "an image with {s} placed {r} {o}",
            "{s} {r} {o} on a dark background",
            "two shapes with {s} {r} {o}",
            "we see {s} {r} {o}",
        )
    ),
    3: (
        _chain("{a} {r1} {b} which is {r2} {c}"),
        _chain("there is {a} {r1} {b} that is {r2} {c}"),
        _chain("a picture of {a} {r1} {b} which sits {r2} {c}"),
        _chain("three shapes with {a} {r1} {b} which is {r2} {c}"),
        _chain("we see {a} {r1} {b} that sits {r2} {c}"),
        _claims("{x1} is {r1} {y1} and {x2} is {r2} {y2}"),
        _claims("{x1} {r1} {y1} while {x2} is {r2} {y2}"),
        _claims("there is {x1} {r1} {y1} and {x2} sits {r2} {y2}"),
    ),
}


def make_captions(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """`n` different captions of `scene`, each from a different template."""
    templates = TEMPLATES[len(scene.objects)]
    if n > len(templates):
        raise ValueError(f"{n} captions asked but only {len(templates)} templates exist")
    captions = [t(scene, rng) for t in rng.sample(templates, n)]
    if len(set(captions)) != n:
        raise AssertionError(f"templates gave repeated captions: {captions}")
    return captions
