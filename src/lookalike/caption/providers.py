"""Where captions come from: OpenAI-compatible chat-completions endpoints, one preset per provider.

Every provider here speaks the same protocol, so one client (the official `openai` SDK with a
`base_url`) serves them all. Keys are read from the environment, or from a `.env` file the user
names, and are never written anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import ConfigError


@dataclass(frozen=True)
class Provider:
    base_url: str
    model: str | None  # None: the user must name one
    key_env: str | None  # None: no key needed (local servers)
    price_in: float | None = None  # USD per million tokens, where known
    price_out: float | None = None
    image_tokens: str = "openai"  # how to estimate an image's tokens: openai (512-px tiles) or gemini (768-px tiles)


PROVIDERS: dict[str, Provider] = {
    # the write-up used Grok's vision API; grok-4-fast takes images, $0.20 / $0.50 per million tokens
    "xai": Provider("https://api.x.ai/v1", "grok-4-fast-non-reasoning", "XAI_API_KEY", 0.20, 0.50),
    "openai": Provider("https://api.openai.com/v1", "gpt-4.1-mini", "OPENAI_API_KEY"),
    "gemini": Provider("https://generativelanguage.googleapis.com/v1beta/openai/", "gemini-2.5-flash",
                       "GEMINI_API_KEY", image_tokens="gemini"),
    "ollama": Provider("http://localhost:11434/v1/", "qwen3-vl:8b", None, 0.0, 0.0),
    "vllm": Provider("http://localhost:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct", None, 0.0, 0.0),
    "custom": Provider("", None, None),
}


@dataclass(frozen=True)
class Endpoint:
    """The provider preset with the user's settings applied."""

    provider: str
    base_url: str
    model: str
    key_env: str | None
    price_in: float | None
    price_out: float | None
    image_tokens: str


def endpoint(cc) -> Endpoint:
    """The endpoint that the `caption` settings `cc` describe; names the setting that is missing."""
    preset = PROVIDERS[cc.provider]
    base_url = cc.base_url or preset.base_url
    if not base_url:
        raise ConfigError("caption.provider = 'custom' needs caption.base_url, e.g. --base-url http://localhost:8080/v1")
    model = cc.model or preset.model
    if not model:
        raise ConfigError(f"caption.model is not set and {cc.provider!r} has no default model; "
                          "name the vision model, e.g. --model Qwen/Qwen2.5-VL-7B-Instruct")
    return Endpoint(
        cc.provider, base_url, model, cc.api_key_env or preset.key_env,
        cc.price_in if cc.price_in is not None else preset.price_in,
        cc.price_out if cc.price_out is not None else preset.price_out,
        preset.image_tokens,
    )


def api_key(ep: Endpoint, env_file: Path | None = None) -> str:
    """The API key from the environment (or `env_file`); local endpoints without a key get a placeholder."""
    values = {}
    if env_file is not None:
        from dotenv import dotenv_values

        if not Path(env_file).is_file():
            raise ConfigError(f"--env-file {str(env_file)!r} not found; give the .env file that holds {ep.key_env or 'the key'}")
        values = {k: v for k, v in dotenv_values(env_file).items() if v}
    if ep.key_env is None:
        return "not-needed"  # the SDK insists on a value; local servers ignore it
    key = os.environ.get(ep.key_env) or values.get(ep.key_env)
    if not key:
        where = f" or in {env_file}" if env_file else ""
        raise ConfigError(
            f"the {ep.provider} endpoint ({ep.base_url}) needs an API key in the environment variable {ep.key_env}, "
            f"which is not set{where}: export {ep.key_env}=..., or put it in a .env file and pass --env-file .env "
            "(caption.api_key_env names another variable)"
        )
    return key


class Redactor:
    """Removes secrets from text before it is printed or written (a server may echo what it was sent)."""

    def __init__(self, *secrets: str):
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text
