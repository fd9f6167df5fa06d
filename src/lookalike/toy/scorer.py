"""The toy world's face recogniser: finds the people in a 64² scene and says who and what they are.

A small convolutional network reads a scene and answers, for each of the three places a person can
stand (left, centre, right): is someone there, who it is (a stranger, Arthur or Grace), their glasses
(none / glasses / sunglasses) and hair colour; and for the whole image, the background. It is trained
on generated scenes (a share with Arthur, a share with Grace, some with both), half of them passed
through the toy FLUX's VAE (every drawn image comes out of its decoder, which softens small shapes such
as Grace's bun), made blurrier, noisier and shifted in colour at random, because what it
reads are a diffusion model's drawings, not the generator's clean ones. Its accuracy is measured on
held-out scenes (`evaluate`) and reported with every number it gives.

    scorer = Scorer.load()
    [reading] = scorer.read([image])   # Reading(background='beach', people=[Found('left', arthur=True, ...)])
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lookalike.toy.scenes import BACKGROUNDS, GLASSES, HAIR_CLASSES, IDENTITIES, SLOTS, Scene, random_scene, render

log = logging.getLogger(__name__)

SCORER_FILE = Path(__file__).parent / "scorer.safetensors"
PER_SLOT = 2 + len(IDENTITIES) + len(GLASSES) + len(HAIR_CLASSES)  # present, who, glasses, hair logits


@dataclass(frozen=True)
class Found:
    """One person the scorer found. `who`: stranger / arthur / grace (IDENTITIES); `p_arthur`, `p_grace`:
    its probability that this is Arthur, Grace."""

    slot: str
    arthur: bool
    glasses: str
    hair: str
    p_arthur: float = 0.0
    who: str = ""
    p_grace: float = 0.0

    def __post_init__(self):
        if not self.who:  # built by hand with `arthur` only
            object.__setattr__(self, "who", "arthur" if self.arthur else "stranger")

    def p(self, who: str) -> float:
        """Probability that this is `who` ('arthur' or 'grace')."""
        return {"arthur": self.p_arthur, "grace": self.p_grace}[who]


@dataclass
class Reading:
    """What the scorer sees in one image."""

    background: str
    people: list[Found] = field(default_factory=list)

    def at(self, slot: str) -> Found | None:
        return next((p for p in self.people if p.slot == slot), None)

    @property
    def arthurs(self) -> list[Found]:
        return self.found("arthur")

    def found(self, who: str) -> list[Found]:
        """The people read as `who` ('arthur' or 'grace')."""
        return [p for p in self.people if p.who == who]

    def as_dict(self) -> dict:
        return {"background": self.background, "people": [asdict(p) for p in self.people]}


def build_network():
    """~0.4 M parameters: four strided convolutions to an 8 x 8 map, one hidden layer, all heads at once.

    [B, 3, 64, 64] in [-1, 1] -> [B, len(BACKGROUNDS) + 3 * PER_SLOT] logits.
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(),
        nn.Linear(256, len(BACKGROUNDS) + len(SLOTS) * PER_SLOT),
    )


def split_logits(logits):
    """[B, K] -> background [B, 5] and per slot [B, 3, PER_SLOT] split into (present, who, glasses, hair)."""
    nb = len(BACKGROUNDS)
    slots = logits[:, nb:].reshape(len(logits), len(SLOTS), PER_SLOT)
    g = 2 + len(IDENTITIES)
    h = g + len(GLASSES)
    return logits[:, :nb], slots[..., 0:2], slots[..., 2:g], slots[..., g:h], slots[..., h:]


def targets(scenes: list[Scene]):
    """Labels for a list of scenes: background [B]; present, who (IDENTITIES), glasses, hair [B, 3] (long)."""
    import torch

    bg = torch.tensor([BACKGROUNDS.index(s.background) for s in scenes])
    present = torch.zeros(len(scenes), len(SLOTS), dtype=torch.long)
    who, glasses, hair = present.clone(), present.clone(), present.clone()
    for i, s in enumerate(scenes):
        for p in s.people:
            j = SLOTS.index(p.slot)
            present[i, j] = 1
            who[i, j] = IDENTITIES.index(p.identity)
            glasses[i, j] = GLASSES.index(p.glasses)
            hair[i, j] = HAIR_CLASSES.index(p.hair)
    return bg, present, who, glasses, hair


def loss_fn(logits, labels):
    """Cross-entropy of every head; who/glasses/hair only where a person stands."""
    import torch.nn.functional as F

    bg_l, pres_l, who_l, gl_l, hair_l = split_logits(logits)
    bg, present, who, glasses, hair = labels
    mask = present.bool()
    loss = F.cross_entropy(bg_l, bg) + F.cross_entropy(pres_l.reshape(-1, 2), present.reshape(-1))
    for head, y in ((who_l, who), (gl_l, glasses), (hair_l, hair)):
        loss = loss + F.cross_entropy(head[mask], y[mask])
    return loss


def to_tensor(images):
    """PIL images -> [B, 3, 64, 64] in [-1, 1]."""
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def degrade(x, generator):
    """Make clean renders look like a diffusion model's: blur, noise, colour shift and brightness, at random.

    x: [B, 3, H, W] in [-1, 1] -> same shape.
    """
    import torch
    import torch.nn.functional as F

    b = len(x)
    sigma = float(torch.rand(1, generator=generator)) * 1.2
    if sigma > 0.2:
        r = torch.arange(-2, 3, dtype=torch.float32)
        k = torch.exp(-(r**2) / (2 * sigma**2))
        k = (k / k.sum())
        x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
        x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
    x = x * (1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5))
    x = x + 0.08 * (torch.rand(b, 3, 1, 1, generator=generator) - 0.5)
    x = x + torch.randn(x.shape, generator=generator) * 0.06 * torch.rand(b, 1, 1, 1, generator=generator)
    return x.clamp(-1, 1)


def vae_roundtrip(x, batch: int = 256):
    """Images encoded and decoded by the toy FLUX's VAE, as every image the model draws is decoded by it.

    x: [B, 3, 64, 64] in [-1, 1] -> same shape.
    """
    import torch
    from diffusers import AutoencoderKL

    from lookalike.toy import TOY_FOLDER

    vae = AutoencoderKL.from_pretrained(TOY_FOLDER / "vae", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.cat([vae.decode(vae.encode(x[i:i + batch]).latent_dist.mode()).sample.clamp(-1, 1)
                          for i in range(0, len(x), batch)])


def training_scenes(seed: int, n: int, arthur_share: float = 0.4, grace_share: float = 0.3) -> list[Scene]:
    """n random scenes, a share with Arthur and (independently) a share with Grace; scene i depends only
    on (seed, i)."""
    out = []
    for i in range(n):
        rng = random.Random(f"scorer:{seed}:{i}")
        arthur, grace = rng.random() < arthur_share, rng.random() < grace_share
        out.append(random_scene(rng, arthur=arthur, grace=grace))
    return out


def train(seed: int = 0, scenes: int = 20000, steps: int = 3000, batch: int = 64, lr: float = 2e-3, progress=None,
          vae_share: float = 0.5):
    """Train the scorer on generated scenes (a share `vae_share` of each batch passed through the toy VAE,
    all degraded at random). Returns the network in eval mode."""
    import torch

    torch.manual_seed(seed)
    net = build_network()
    data = training_scenes(seed, scenes)
    images = to_tensor([render(s) for s in data])
    coded = vae_roundtrip(images) if vae_share else images
    labels = targets(data)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(images), (batch,), generator=g)
        through_vae = (torch.rand(batch, generator=g) < vae_share).view(-1, 1, 1, 1)
        x = torch.where(through_vae, coded[idx], images[idx])
        loss = loss_fn(net(degrade(x, g)), tuple(y[idx] for y in labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step % 250 == 0 or step == steps - 1):
            progress(f"scorer step {step}/{steps} loss {float(loss.detach()):.4f}")
    return net.eval()


class Scorer:
    """The trained network, reading PIL images into `Reading`s."""

    def __init__(self, net):
        self.net = net.eval()

    @classmethod
    def load(cls, path: str | Path = SCORER_FILE) -> "Scorer":
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            from lookalike.errors import LookalikeError

            raise LookalikeError(f"the toy scorer's weights {path} are missing; rebuild them with "
                                 "`lookalike toy scorer` (a few minutes on a CPU)")
        net = build_network()
        net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        return cls(net)

    def save(self, path: str | Path = SCORER_FILE) -> Path:
        from safetensors.torch import save_file

        save_file({k: v.detach().half().contiguous() for k, v in self.net.state_dict().items()}, str(path))
        return Path(path)

    def logits(self, x):
        import torch

        with torch.no_grad():
            return torch.cat([self.net(x[i:i + 256]) for i in range(0, len(x), 256)])

    def read(self, images) -> list[Reading]:
        """One `Reading` per PIL image: the background, and the people found left to right."""
        return self.read_tensor(to_tensor(images))

    def read_tensor(self, x) -> list[Reading]:
        bg_l, pres_l, who_l, gl_l, hair_l = split_logits(self.logits(x))
        p_who = who_l.softmax(-1)  # [B, 3, len(IDENTITIES)]
        arthur, grace = IDENTITIES.index("arthur"), IDENTITIES.index("grace")
        out = []
        for i in range(len(x)):
            people = []
            for j, slot in enumerate(SLOTS):
                if int(pres_l[i, j].argmax()) != 1:
                    continue
                who = IDENTITIES[int(p_who[i, j].argmax())]
                people.append(Found(slot, who == "arthur", GLASSES[int(gl_l[i, j].argmax())],
                                    HAIR_CLASSES[int(hair_l[i, j].argmax())], round(float(p_who[i, j, arthur]), 4),
                                    who, round(float(p_who[i, j, grace]), 4)))
            out.append(Reading(BACKGROUNDS[int(bg_l[i].argmax())], people))
        return out


def evaluate(scorer: Scorer, scenes: list[Scene], degraded: bool = False, seed: int = 0, vae: bool = False) -> dict:
    """Accuracy on labelled scenes: per head, per person (found at the right place; Arthur or not; who:
    stranger, Arthur or Grace), and whole scenes read without a single mistake."""
    import torch

    x = to_tensor([render(s) for s in scenes])
    if vae:
        x = vae_roundtrip(x)
    if degraded:
        x = degrade(x, torch.Generator().manual_seed(seed))
    readings = scorer.read_tensor(x)
    n_people = sum(len(s.people) for s in scenes)
    counts = dict(background=0, places=0, person_found=0, arthur=0, who=0, glasses=0, hair=0, scene=0)
    for s, r in zip(scenes, readings):
        counts["background"] += r.background == s.background
        places_ok = all((s.at(slot) is None) == (r.at(slot) is None) for slot in SLOTS)
        counts["places"] += places_ok
        scene_ok = places_ok and r.background == s.background
        for p in s.people:
            f = r.at(p.slot)
            if f is None:
                scene_ok = False
                continue
            counts["person_found"] += 1
            counts["arthur"] += f.arthur == p.is_arthur
            counts["who"] += f.who == p.identity
            counts["glasses"] += f.glasses == p.glasses
            counts["hair"] += f.hair == p.hair
            scene_ok = scene_ok and f.who == p.identity and f.glasses == p.glasses and f.hair == p.hair
        counts["scene"] += scene_ok
    n = len(scenes)
    return {
        "scenes": n, "people": n_people, "degraded": degraded, "vae": vae,
        "background": counts["background"] / n, "places": counts["places"] / n,
        "person_found": counts["person_found"] / n_people, "arthur": counts["arthur"] / n_people,
        "who": counts["who"] / n_people,
        "glasses": counts["glasses"] / n_people, "hair": counts["hair"] / n_people, "scene": counts["scene"] / n,
    }
