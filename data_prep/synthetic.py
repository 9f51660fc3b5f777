"""Seeded synthetic scenes of coloured shapes, their images, and their English captions and QA."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from data_prep.phrase_grammar import Meaning, Renderer
from data_prep.phrase_tables import TABLES

# Anything numpy's SeedSequence accepts; a tuple like (seed, split, index) gives independent streams.
Seed = int | Sequence[int]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 180),
    "orange": (245, 135, 25),
}
SIZES: dict[str, float] = {"small": 5.0, "big": 10.0}  # radius in px at 64 px
# Centres as fractions of the image side. This order is the order objects are mentioned in captions.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "top": (0.5, 0.25),
    "centre": (0.5, 0.5),
    "bottom": (0.5, 0.75),
    "right": (0.75, 0.5),
}
P_ONE_OBJECT = 0.4
RADIUS_JITTER_PX = 1.0  # at 64 px, like the sizes
CENTRE_JITTER_PX = 2.0
BACKGROUND = 205  # light grey
NOISE = 12  # uniform per-pixel noise of +-NOISE grey levels

_ENGLISH = Renderer(TABLES["en"])
_NUMBER_WORDS = {1: "one", 2: "two"}


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for name, value, known in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, COLOURS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
        ):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r} (known: {', '.join(known)})")


@dataclass
class Scene:
    objects: list[SceneObject] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"objects": [dict(vars(obj)) for obj in self.objects]}  # flat; dataclasses.asdict is 10x slower

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        try:
            return cls([SceneObject(o["shape"], o["colour"], o["size"], o["position"]) for o in data["objects"]])
        except (KeyError, TypeError) as err:
            raise ValueError(f"bad scene {data!r}: needs objects with shape, colour, size, position") from err

    def in_caption_order(self) -> list[SceneObject]:
        order = list(POSITIONS)
        return sorted(self.objects, key=lambda obj: order.index(obj.position))


def generate_scenes(n: int, seed: Seed) -> list[Scene]:
    """n random scenes of 1 or 2 objects at distinct positions; the same seed gives the same scenes."""
    rng = np.random.default_rng(seed)
    # Drawn for all scenes at once (per-scene numpy calls cost seconds at 20k scenes).
    counts = np.where(rng.random(n) < P_ONE_OBJECT, 1, 2).tolist()
    positions = np.argsort(rng.random((n, len(POSITIONS))), axis=1).tolist()  # a random order per scene
    # Indices into each vocabulary, for a second object too even when the scene has one.
    shapes, colours, sizes = (rng.integers(len(vocab), size=(n, 2)).tolist() for vocab in (SHAPES, COLOURS, SIZES))
    colour_names, size_names, position_names = list(COLOURS), list(SIZES), list(POSITIONS)
    return [
        Scene(
            [
                SceneObject(
                    SHAPES[shapes[i][j]],
                    colour_names[colours[i][j]],
                    size_names[sizes[i][j]],
                    position_names[positions[i][j]],
                )
                for j in range(counts[i])
            ]
        )
        for i in range(n)
    ]


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape of 'radius' r; sizes chosen so the shapes look equally big."""
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    # Triangle and star are drawn point up on a circle; the star alternates outer and inner vertices.
    radii = [1.15 * r] * 3 if shape == "triangle" else [1.25 * r, 0.5 * r] * 5
    angles = (-math.pi / 2 + 2 * math.pi * i / len(radii) for i in range(len(radii)))
    return [(cx + rad * math.cos(a), cy + rad * math.sin(a)) for rad, a in zip(radii, angles)]


def render(scene: Scene, image_size: int = 64, seed: Seed = 0) -> Image.Image:
    """RGB image of the scene; jitter and background noise come from seed, so a seed fixes the pixels."""
    rng = np.random.default_rng(seed)
    scale = image_size / 64
    # Jitter first, so a seed places the objects alike at every image size.
    jitter = rng.uniform(-1, 1, size=(len(scene.objects), 3)).tolist()  # x, y, radius per object
    # Grey noise (R = G = B): the background carries no colour cue, and it PNG-encodes twice as fast.
    noise = rng.integers(BACKGROUND - NOISE, BACKGROUND + NOISE + 1, size=(image_size, image_size), dtype=np.uint8)
    image = Image.fromarray(noise, "L").convert("RGB")
    draw = ImageDraw.Draw(image)
    for obj, (jx, jy, jr) in zip(scene.objects, jitter):
        fx, fy = POSITIONS[obj.position]
        cx = fx * image_size + CENTRE_JITTER_PX * scale * jx
        cy = fy * image_size + CENTRE_JITTER_PX * scale * jy
        r = (SIZES[obj.size] + RADIUS_JITTER_PX * jr) * scale
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon(_outline(obj.shape, cx, cy, r), fill=colour)
    return image


def _object_slots(obj: SceneObject) -> dict[str, str]:
    return {"size": obj.size, "colour": obj.colour, "shape": obj.shape, "pos": obj.position}


def english_caption(scene: Scene) -> str:
    """E.g. "a small red circle on the left and a big blue square in the centre"."""
    return _english(Meaning("caption", tuple(_object_slots(obj) for obj in scene.in_caption_order())))


def _english(meaning: Meaning) -> str:
    return _ENGLISH.render(meaning)


def _qa(qtype: str, question: Meaning, answer: Meaning) -> dict:
    return {"type": qtype, "question": _english(question), "answers": [_english(answer)]}


def english_qa(scene: Scene) -> list[dict]:
    """Every applicable question, only where the answer is unambiguous.

    colour: asked for shapes that occur once; shape: for colours that occur once;
    where: for colour+shape pairs that occur once (two small and big red circles would be ambiguous).
    """
    objects = scene.in_caption_order()
    shapes = Counter(obj.shape for obj in objects)
    colours = Counter(obj.colour for obj in objects)
    pairs = Counter((obj.colour, obj.shape) for obj in objects)
    qa = [_qa("count", Meaning("q_count", ({},)), Meaning("a_count", ({"number": _NUMBER_WORDS[len(objects)]},)))]
    qa += [
        _qa("colour", Meaning("q_colour", ({"shape": obj.shape},)), Meaning("a_colour", ({"colour": obj.colour},)))
        for obj in objects
        if shapes[obj.shape] == 1
    ]
    qa += [
        _qa("shape", Meaning("q_shape", ({"colour": obj.colour},)), Meaning("a_shape", ({"shape": obj.shape},)))
        for obj in objects
        if colours[obj.colour] == 1
    ]
    qa += [
        _qa(
            "where",
            Meaning("q_where", ({"colour": obj.colour, "shape": obj.shape},)),
            Meaning("a_where", ({"pos": obj.position},)),
        )
        for obj in objects
        if pairs[(obj.colour, obj.shape)] == 1
    ]
    return qa
