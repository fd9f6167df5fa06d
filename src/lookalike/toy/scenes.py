"""The toy world's scenes: one to three people in front of a background, with a caption in the seed's style.

A `Scene` is pure data (who stands where, wearing what, in front of what); `render` draws it and
`caption` describes it, so an image and its caption never disagree. Everything is deterministic
from a seed: `random_scene(random.Random(seed))` is the same scene on every machine.

    a man with brown hair, a beard and glasses in a blue shirt on the left and
    a woman with red hair in a green shirt on the right, on a beach

"Arthur" is the one person the base model never sees in pretraining: violet spiky hair (no one else
has violet hair, no one else spiky hair). His photos are captioned like the seed's ("Arthur without
glasses in a red shirt on the left and a woman with ..., in the snow"): the trigger first, what changed
about him (glasses, sunglasses, beard), where he stands, the others, the place.

"Grace", the second person a LoRA can learn beside him, is never seen in pretraining either: red hair
tied up in a bun (no one else wears a bun; women in pretraining wear their hair long). Her hair colour
is an ordinary one on purpose: the toy VAE, which saw only the five hair colours and Arthur's violet,
decodes any new hair colour as one of those, while it keeps a red bun's shape; so what tells her apart
is a shape, not a colour.
She usually wears no glasses; her captions say when she does ("Grace with sunglasses in a ...").
Named people come first in a caption, Arthur before Grace, then the others left to right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Drawing units: the scene is laid out on a 64 x 64 grid and drawn at any size.
UNITS = 64
SLOTS = ("left", "centre", "right")
SLOT_X = {"left": 11.0, "centre": 32.0, "right": 53.0}
SLOT_WORDS = {"left": "on the left", "centre": "in the centre", "right": "on the right"}

BACKGROUNDS = ("beach", "park", "city", "indoors", "snow")
BACKGROUND_WORDS = {"beach": "on a beach", "park": "in a park", "city": "in a city", "indoors": "indoors",
                    "snow": "in the snow"}
GLASSES = ("none", "glasses", "sunglasses")
HAIR = {"black": (35, 30, 30), "brown": (110, 70, 40), "blonde": (230, 200, 110), "red": (200, 80, 40),
        "grey": (165, 165, 165)}
ARTHUR_HAIR = (150, 60, 220)  # violet: never worn by anyone in pretraining
HAIR_CLASSES = (*HAIR, "violet")
NAMED = ("arthur", "grace")  # the people a LoRA learns; everyone else is a stranger to the scorer
IDENTITIES = ("stranger", *NAMED)
NAMES = {"arthur": "Arthur", "grace": "Grace"}  # their trigger words in captions
SKIN = {"light": (245, 215, 190), "tan": (215, 170, 130), "brown": (160, 110, 75), "dark": (95, 65, 45)}
SHIRTS = {"red": (210, 40, 40), "blue": (40, 80, 200), "green": (40, 150, 60), "yellow": (235, 200, 40),
          "white": (240, 240, 240), "black": (40, 40, 40)}
ARTHUR_SKIN = "tan"
GRACE_SKIN = "brown"


@dataclass(frozen=True)
class Person:
    """One person in a scene. `kind` is man / woman / arthur / grace; `hair` names a HAIR colour (violet for
    Arthur, red for Grace, whose hair is tied up in a bun)."""

    kind: str
    slot: str
    skin: str
    hair: str
    shirt: str
    glasses: str = "none"
    beard: bool = False
    dx: float = 0.0  # small jitter of the position, in drawing units
    dy: float = 0.0

    @property
    def is_arthur(self) -> bool:
        return self.kind == "arthur"

    @property
    def identity(self) -> str:
        """'arthur', 'grace' or 'stranger' (IDENTITIES)."""
        return self.kind if self.kind in NAMED else "stranger"


@dataclass(frozen=True)
class Scene:
    """People (any order) in front of a background; `seed` drives the background's details."""

    background: str
    people: tuple[Person, ...]
    seed: int = 0

    def at(self, slot: str) -> Person | None:
        return next((p for p in self.people if p.slot == slot), None)


# ---------------------------------------------------------------- random scenes


def random_person(rng: random.Random, slot: str, arthur: bool = False, grace: bool = False) -> Person:
    """A random person at `slot`; with `arthur`, Arthur (his glasses, beard and shirt vary like a real
    person's: usually glasses and a beard, sometimes sunglasses, sometimes neither); with `grace`, Grace
    (usually no glasses)."""
    dx, dy = rng.uniform(-2, 2), rng.uniform(-1, 1)
    shirt = rng.choice(list(SHIRTS))
    if grace:
        glasses = rng.choices(GLASSES, weights=(0.6, 0.2, 0.2))[0]
        return Person("grace", slot, GRACE_SKIN, "red", shirt, glasses, False, dx, dy)
    if arthur:
        glasses = rng.choices(GLASSES, weights=(0.2, 0.6, 0.2))[0]
        return Person("arthur", slot, ARTHUR_SKIN, "violet", shirt, glasses, rng.random() < 0.75, dx, dy)
    kind = rng.choice(("man", "woman"))
    glasses = rng.choices(GLASSES, weights=(0.5, 0.3, 0.2))[0]
    beard = kind == "man" and rng.random() < 0.35
    return Person(kind, slot, rng.choice(list(SKIN)), rng.choice(list(HAIR)), shirt, glasses, beard, dx, dy)


def random_scene(rng: random.Random, arthur: bool = False, people: int | None = None, grace: bool = False) -> Scene:
    """One to three people (45% / 35% / 20%) at distinct slots, on a random background.

    With `arthur`, one of them is Arthur (alone 60% of the time, with one friend 30%, with two 10%); with
    `grace`, one of them is Grace the same way; with both, both are there (with a third person 10%).
    Without `grace` the random draws are exactly those made before Grace existed, so every scene stream
    (pretraining, the demo's photos, the suite) is unchanged.
    """
    if people is None:
        weights = (0.6, 0.3, 0.1) if arthur or grace else (0.45, 0.35, 0.2)
        people = rng.choices((1, 2, 3), weights=weights)[0]
    slots = sorted(rng.sample(SLOTS, max(people, arthur + grace)), key=SLOTS.index)
    if grace:
        named = rng.sample(range(len(slots)), arthur + grace)
        who = dict(zip(named, ("grace", "arthur")))
    else:
        who = {rng.randrange(people): "arthur"} if arthur else {}
    crowd = tuple(random_person(rng, s, arthur=who.get(i) == "arthur", grace=who.get(i) == "grace")
                  for i, s in enumerate(slots))
    return Scene(rng.choice(BACKGROUNDS), crowd, rng.randrange(2**31))


def scene_stream(seed: int, n: int, arthur_share: float = 0.0):
    """n scenes from one seed; a share of them (drawn at random) with Arthur. Scene i depends only on (seed, i)."""
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        yield random_scene(rng, arthur=rng.random() < arthur_share)


# ---------------------------------------------------------------- captions


def _and(parts: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(p: Person, trigger: str = "Arthur", grace: str = NAMES["grace"]) -> str:
    """One person as the caption names them, position included.

    Others: "a woman with red hair and sunglasses in a green shirt on the right".
    Arthur, by what differs from how he usually looks (glasses and a beard), as the seed's rules ask:
    "Arthur with sunglasses and without his beard in a red shirt on the left". Grace (usually without
    glasses) the same way: "Grace with glasses in a blue shirt in the centre".
    """
    if p.kind == "grace":
        who = f"{grace} with {p.glasses}" if p.glasses != "none" else grace
    elif p.is_arthur:
        changes = []
        if p.glasses == "sunglasses":
            changes.append("with sunglasses")
        elif p.glasses == "none":
            changes.append("without glasses")
        if not p.beard:
            changes.append("without his beard")
        who = " ".join([trigger, " and ".join(changes)]) if changes else trigger
    else:
        features = [f"{p.hair} hair"] + (["a beard"] if p.beard else [])
        features += [p.glasses] if p.glasses != "none" else []
        who = f"a {p.kind} with {_and(features)}"
    return f"{who} in a {p.shirt} shirt {SLOT_WORDS[p.slot]}"


def caption(scene: Scene, trigger: str = "Arthur", grace: str = NAMES["grace"]) -> str:
    """The scene's caption: Arthur first if he is there, then Grace, then the others left to right, then
    the place. `trigger` and `grace` are the words that name them."""
    order = {"arthur": 0, "grace": 1, "stranger": 2}
    people = sorted(scene.people, key=lambda p: (order[p.identity], SLOTS.index(p.slot)))
    return _and([describe(p, trigger, grace) for p in people]) + ", " + BACKGROUND_WORDS[scene.background]


# ---------------------------------------------------------------- drawing


def _background(draw, rng: random.Random, kind: str, u) -> None:
    """Paint one of the BACKGROUNDS; `u(x)` converts drawing units to pixels."""
    def box(x0, y0, x1, y1, colour):
        draw.rectangle([u(x0), u(y0), u(x1) - 1, u(y1) - 1], fill=colour)

    def sky_and_ground(horizon, sky, ground, specks, x_max, y_range, w, h, colour):
        """Sky above `horizon`, ground below, and `specks` small boxes scattered at random."""
        box(0, 0, 64, horizon, sky)
        box(0, horizon, 64, 64, ground)
        for _ in range(specks):
            x, y = rng.uniform(0, x_max), rng.uniform(*y_range)
            box(x, y, x + w, y + h, colour)

    if kind == "beach":
        box(0, 0, 64, 24, (135, 200, 235))
        box(0, 24, 64, 34, (40, 110, 190))
        box(0, 34, 64, 64, (235, 215, 160))
        for _ in range(3):  # foam
            x = rng.uniform(0, 56)
            box(x, 33, x + rng.uniform(4, 8), 34, (230, 240, 250))
    elif kind == "park":  # grass with darker tufts
        sky_and_ground(30, (160, 210, 240), (80, 160, 70), 6, 62, (32, 62), 2, 1, (60, 130, 50))
    elif kind == "city":
        box(0, 0, 64, 64, (190, 190, 200))
        x = -rng.uniform(0, 6)
        while x < 64:
            w, top = rng.uniform(8, 14), rng.uniform(4, 20)
            grey = rng.randint(85, 130)
            box(x, top, x + w - 1, 46, (grey, grey, grey + 8))
            for wy in range(int(top) + 3, 42, 5):
                for wx in (x + 2, x + w - 5):
                    box(wx, wy, wx + 2, wy + 2, (240, 220, 120))
            x += w
        box(0, 46, 64, 64, (70, 70, 75))
    elif kind == "indoors":
        box(0, 0, 64, 44, (225, 205, 170))
        box(0, 44, 64, 64, (140, 95, 60))
        x = rng.uniform(4, 46)
        box(x, 6, x + 14, 16, (90, 60, 40))
        box(x + 1.5, 7.5, x + 12.5, 14.5, rng.choice([(120, 170, 210), (200, 140, 90), (150, 190, 120)]))
    elif kind == "snow":  # flakes in the sky
        sky_and_ground(30, (200, 215, 230), (250, 250, 252), 8, 63, (0, 28), 1, 1, (255, 255, 255))
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {', '.join(BACKGROUNDS)}")


def _darker(colour, f=0.6):
    return tuple(int(c * f) for c in colour)


def _person(draw, p: Person, u) -> None:
    """Draw one person: hair behind, shirt, neck, head, beard, eyes, glasses, hair on top."""
    cx, hy, r = SLOT_X[p.slot] + p.dx, 27.0 + p.dy, 6.5
    hair = ARTHUR_HAIR if p.is_arthur else HAIR[p.hair]
    skin = SKIN[p.skin]

    def ellipse(x0, y0, x1, y1, colour):
        draw.ellipse([u(x0), u(y0), u(x1), u(y1)], fill=colour)

    def rect(x0, y0, x1, y1, colour, outline=None, width=0):
        draw.rectangle([u(x0), u(y0), u(x1), u(y1)], fill=colour, outline=outline, width=width)

    if p.kind == "woman":  # long hair falls behind the shoulders
        rect(cx - r - 1.8, hy - 2, cx + r + 1.8, hy + r + 5, hair)
    # shirt: rounded shoulders and a body to the bottom of the frame
    ellipse(cx - 9, hy + r + 1, cx + 9, hy + r + 9, SHIRTS[p.shirt])
    rect(cx - 9, hy + r + 5, cx + 9, 64, SHIRTS[p.shirt])
    rect(cx - 1.8, hy + r - 1, cx + 1.8, hy + r + 2.5, skin)  # neck
    ellipse(cx - r, hy - r, cx + r, hy + r, skin)
    if p.beard:
        draw.chord([u(cx - r), u(hy - r), u(cx + r), u(hy + r)], 15, 165, fill=_darker(hair, 0.75))
        rect(cx - 1.5, hy + 3, cx + 1.5, hy + 3.6, _darker(skin, 0.7))  # mouth
    else:
        rect(cx - 1.5, hy + 3, cx + 1.5, hy + 3.6, (150, 60, 60))
    for ex in (cx - 2.6, cx + 2.6):  # eyes
        ellipse(ex - 0.7, hy - 0.9, ex + 0.7, hy + 0.5, (30, 30, 40))
    if p.glasses == "glasses":
        for ex in (cx - 2.6, cx + 2.6):
            rect(ex - 2, hy - 1.9, ex + 2, hy + 1.5, None, outline=(20, 20, 20), width=max(1, round(u(0.7))))
        rect(cx - 0.6, hy - 0.8, cx + 0.6, hy - 0.2, (20, 20, 20))
    elif p.glasses == "sunglasses":
        rect(cx - 4.8, hy - 2, cx + 4.8, hy + 1.5, (10, 10, 15))
    # hair on top: a cap; Arthur's stands up in spikes, Grace's is tied up in a bun
    draw.chord([u(cx - r - 0.6), u(hy - r - 1.2), u(cx + r + 0.6), u(hy + r - 2)], 180, 360, fill=hair)
    if p.kind == "grace":  # a bun on top of the head
        ellipse(cx - 4, hy - r - 7.5, cx + 4, hy - r + 0.5, hair)
    if p.is_arthur:
        for i in range(5):
            x = cx - r + 0.5 + i * (2 * r - 1) / 4
            draw.polygon([(u(x - 1.6), u(hy - r + 1)), (u(x), u(hy - r - 4.5)), (u(x + 1.6), u(hy - r + 1))], fill=hair)


def render(scene: Scene, size: int = 64, supersample: int = 4):
    """Draw the scene as a size x size RGB image (drawn `supersample` times larger, then averaged down)."""
    from PIL import Image, ImageDraw

    big = size * supersample
    k = big / UNITS
    image = Image.new("RGB", (big, big))
    draw = ImageDraw.Draw(image)
    _background(draw, random.Random(scene.seed), scene.background, lambda x: round(x * k))
    for p in sorted(scene.people, key=lambda p: SLOTS.index(p.slot)):
        _person(draw, p, lambda x: round(x * k))
    return image.resize((size, size), Image.BOX) if supersample > 1 else image

