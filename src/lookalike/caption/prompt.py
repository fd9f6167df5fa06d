"""What one captioning request says: the rules, the reference image first, the photo second.

With several people in one LoRA (dataset.people), every person's reference comes first, in order, each
named by its trigger, and the photo last; the rules ask for each of them by name wherever they appear.

Images travel as base64 JPEG data URLs, downscaled to `caption.image_side` (xAI takes only JPEG and
PNG, and every provider bills by pixels). The request key hashes everything that shapes a caption,
so a re-run sends nothing for a photo already captioned under the same settings.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math

INSTRUCTIONS = (
    "You write training captions for a text-to-image model that is learning what one person, {trigger}, "
    "looks like. Image 1 is a reference photo of {trigger}. Image 2 is the photo to caption. "
    "Find {trigger} in image 2 by comparing faces with image 1 and describe image 2 in one natural sentence "
    "or two: who is where, what they do and wear, the setting, the light and the framing. Do not describe "
    "{trigger}'s face or other fixed traits beyond the rules. Rules:"
)
PEOPLE = (
    "The model is learning {others} too: the images before the photo include a reference photo of each of "
    "them. Name each of {everyone} who appears in the photo by that name, find them by comparing faces with "
    "their reference, and never give those names to anyone else."
)
REPLY_FORMAT = "Reply with the caption only: plain text, no quotes, no markdown, no preamble."
OUTPUT_TOKENS_GUESS = 80  # a write-up caption is 30-50 words


def system_prompt(rules: list[str], trigger: str, others: list[str] = ()) -> str:
    """The instructions and rules with the trigger word filled in; `others`: more people's triggers."""
    lines = [INSTRUCTIONS.format(trigger=trigger)]
    if others:
        lines.append(PEOPLE.format(others=_and(list(others)), everyone=_and([trigger, *others])))
    lines += [f"- {rule.replace('{trigger}', trigger)}" for rule in rules]
    lines.append(REPLY_FORMAT)
    return "\n".join(lines)


def jpeg_for_request(image, side: int, quality: int) -> tuple[bytes, tuple[int, int]]:
    """An RGB PIL image as JPEG bytes with its long side at most `side`; returns the bytes and (w, h)."""
    scale = min(1.0, side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue(), image.size


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def messages(system: str, reference_url: str, photo_url: str, trigger: str, detail: str,
             others: list[tuple[str, str]] = ()) -> list[dict]:
    """Chat messages: the rules, then one user turn with the reference image first (then, with `others`,
    (trigger, image url) of more people, one reference each) and the photo last."""
    refs = [(trigger, reference_url), *others]
    content = []
    for n, (who, url) in enumerate(refs, 1):
        content += [{"type": "text", "text": f"Image {n}: the reference photo of {who}."},
                    {"type": "image_url", "image_url": {"url": url, "detail": detail}}]
    content += [{"type": "text", "text": f"Image {len(refs) + 1}: the photo to caption. Start the caption with {trigger}."},
                {"type": "image_url", "image_url": {"url": photo_url, "detail": detail}}]
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def references_sha(shas: list[str]) -> str:
    """What keys a request's references: the one reference's sha256 (as before several people), or a hash
    of all of them in order."""
    return shas[0] if len(shas) == 1 else hashlib.sha256(":".join(shas).encode()).hexdigest()


def request_key(photo_sha: str, reference_sha: str, base_url: str, model: str, system: str, cc) -> str:
    """Hash of everything that shapes one caption: photo, reference(s), endpoint and model, rules, image encoding."""
    parts = {
        "photo": photo_sha, "reference": reference_sha, "base_url": base_url.rstrip("/"), "model": model,
        "system": system, "side": cc.image_side, "quality": cc.jpeg_quality, "detail": cc.detail,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def image_tokens(width: int, height: int, scheme: str = "openai", detail: str = "high") -> int:
    """Estimated input tokens of one image.

    openai (also used for providers that publish no formula): fit in 2048², short side to 768, then
    85 + 170 per 512-px tile (85 flat for detail=low). gemini: 258 if both sides <= 384, else 258 per
    768-px tile.
    """
    if scheme == "gemini":
        if max(width, height) <= 384:
            return 258
        return 258 * math.ceil(width / 768) * math.ceil(height / 768)
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def text_tokens(text: str) -> int:
    """Rough token count of English text (about 4 characters per token)."""
    return math.ceil(len(text) / 4)
