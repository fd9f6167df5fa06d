"""Is a caption usable? The checks a reply must pass, and the repairs that are safe to make.

A caption must start with the trigger word, be non-empty, stay within the length bounds, not be a
refusal, and not come wrapped in quotes or markdown. Safe repairs: unwrap quotes and markdown, and
put the trigger word in front. Nothing else is guessed: a refusal stays a flag.
"""

from __future__ import annotations

import re

_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i cannot|i am unable|i'?m unable|i won'?t|unable to|"
    r"as an ai|i'?m not able|i am not able|i do not feel comfortable|i'?m not comfortable)",
    re.IGNORECASE,
)
_WRAPPERS = ('"', "'", "`", "“", "”", "‘", "’", "*", "_", "#")
_PREAMBLE = re.compile(r"^\s*(caption|here is the caption|here's the caption)\s*:\s*", re.IGNORECASE)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.match(text.strip()))


def is_wrapped(text: str) -> bool:
    """Quotes, backticks, markdown emphasis or headings around the caption, or a 'Caption:' preamble."""
    t = text.strip()
    return bool(t) and (t[0] in _WRAPPERS or t[-1] in _WRAPPERS or "```" in t or bool(_PREAMBLE.match(t)))


def violations(text: str, trigger: str, min_chars: int, max_chars: int) -> list[str]:
    """The rules `text` breaks, each stated so it can be sent back to the model; [] when it is fine."""
    t = text.strip()
    if not t:
        return ["the reply was empty"]
    if is_refusal(t):
        return ["the reply refused to caption the photo"]
    found = []
    if is_wrapped(t):
        found.append("it is wrapped in quotes or markdown")
    core = unwrap(t)
    if not core.startswith(trigger):
        found.append(f"it does not start with {trigger}")
    if len(core) < min_chars:
        found.append(f"it is too short ({len(core)} characters, at least {min_chars})")
    if len(core) > max_chars:
        found.append(f"it is too long ({len(core)} characters, at most {max_chars})")
    if "\n" in core:
        found.append("it spans several lines")
    return found


def unwrap(text: str) -> str:
    """Strip code fences, a 'Caption:' preamble, and quotes or markdown around the text."""
    t = text.strip().replace("```text", "").replace("```", "").strip()
    t = _PREAMBLE.sub("", t)
    while t and t[0] in _WRAPPERS and t[-1] in _WRAPPERS:
        t = t.strip("".join(_WRAPPERS)).strip()
    t = t.lstrip("#").strip()
    return t.strip()


def repair(text: str, trigger: str) -> tuple[str, list[str]]:
    """Apply the safe repairs; returns the caption and what was done, e.g. ['trigger prefixed']."""
    done = []
    t = unwrap(text)
    if t != text.strip():
        done.append("quotes/markdown removed")
    flat = " ".join(t.split())
    if flat != t:
        done.append("joined onto one line")
        t = flat
    if t and not t.startswith(trigger):
        if re.match(rf"^(the|a|an)\s+{re.escape(trigger)}\b", t, re.IGNORECASE):
            t = re.sub(r"^(the|a|an)\s+", "", t, count=1, flags=re.IGNORECASE)
        else:
            first = t.split()[0]
            acronym = len(first) > 1 and first.isupper()  # "NASA" keeps its capitals, "A man" does not
            t = f"{trigger}, {t}" if acronym else f"{trigger}, {t[0].lower()}{t[1:]}"
        done.append("trigger prefixed")
    return t, done
