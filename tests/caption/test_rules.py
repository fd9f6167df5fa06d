"""The pure parts of captioning: rules and repairs, the request, token estimates, keys and secrets."""

import base64
import io
import os

import pytest
from PIL import Image

from lookalike.caption.checks import is_refusal, repair, unwrap, violations
from lookalike.caption.prompt import image_tokens, jpeg_for_request, messages, request_key, system_prompt
from lookalike.caption.providers import Redactor, api_key, endpoint
from lookalike.config import load_config
from lookalike.config.schema import SEED_RULES
from lookalike.errors import ConfigError

T = "Arthur"


def test_violations_name_each_broken_rule():
    good = "Arthur on the left with a friend, on a beach at sunset"
    assert violations(good, T, 20, 400) == []
    assert violations("", T, 20, 400) == ["the reply was empty"]
    assert violations("I'm sorry, but I can't identify people.", T, 20, 400) == ["the reply refused to caption the photo"]
    assert violations("A man on a beach at sunset, smiling", T, 20, 400) == ["it does not start with Arthur"]
    assert violations(f'"{good}"', T, 20, 400) == ["it is wrapped in quotes or markdown"]
    assert violations(f"**{good}**", T, 20, 400) == ["it is wrapped in quotes or markdown"]
    assert violations(f"Caption: {good}", T, 20, 400) == ["it is wrapped in quotes or markdown"]
    assert violations("Arthur smiles", T, 20, 400) == ["it is too short (13 characters, at least 20)"]
    assert violations(good, T, 20, 30)[0].startswith("it is too long (54 characters")
    assert violations("Arthur on a beach\nat sunset, smiling", T, 20, 400) == ["it spans several lines"]
    assert not is_refusal("Arthur can't stop smiling on a beach")


def test_repairs_are_only_the_safe_ones():
    assert repair('**"Arthur on a beach, smiling"**', T) == ("Arthur on a beach, smiling", ["quotes/markdown removed"])
    assert repair("A man on a beach, smiling", T) == ("Arthur, a man on a beach, smiling", ["trigger prefixed"])
    assert repair("The Arthur on a beach", T) == ("Arthur on a beach", ["trigger prefixed"])
    assert repair("Arthur on a beach\nat dusk", T) == ("Arthur on a beach at dusk", ["joined onto one line"])
    assert unwrap("```text\nArthur at the desk\n```") == "Arthur at the desk"
    fixed, _ = repair("A man with sunglasses", T)
    assert violations(fixed, T, 10, 400) == []


def test_the_request_carries_the_reference_first_and_the_rules():
    system = system_prompt(SEED_RULES, "Daphne")
    assert '- Always start the caption with "Daphne"' in system and "{trigger}" not in system
    assert "State where Daphne is in the frame (left, center, right)" in system
    chat = messages(system, "data:image/jpeg;base64,REF", "data:image/jpeg;base64,PHOTO", "Daphne", "high")
    urls = [p["image_url"]["url"] for p in chat[1]["content"] if p["type"] == "image_url"]
    assert urls == ["data:image/jpeg;base64,REF", "data:image/jpeg;base64,PHOTO"] and chat[0]["role"] == "system"

    jpeg, size = jpeg_for_request(Image.new("RGB", (4032, 3024), "red"), 768, 90)
    assert size == (768, 576) and Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert jpeg_for_request(Image.new("RGB", (300, 200)), 768, 90)[1] == (300, 200)  # never enlarged
    base64.b64decode(base64.b64encode(jpeg))


def test_image_token_estimates():
    assert image_tokens(1024, 1024) == 765  # OpenAI's published example
    assert image_tokens(2048, 4096) == 1105  # likewise
    assert image_tokens(768, 576, detail="low") == 85
    assert image_tokens(300, 300, "gemini") == 258 and image_tokens(1000, 700, "gemini") == 516


def test_request_key_changes_with_what_shapes_a_caption():
    cc = load_config().caption
    base = request_key("photo", "ref", "http://x/v1", "m", "rules", cc)
    assert request_key("photo", "ref", "http://x/v1/", "m", "rules", cc) == base
    for changed in (("photo2", "ref", "http://x/v1", "m", "rules"), ("photo", "ref2", "http://x/v1", "m", "rules"),
                    ("photo", "ref", "http://y/v1", "m", "rules"), ("photo", "ref", "http://x/v1", "m2", "rules"),
                    ("photo", "ref", "http://x/v1", "m", "rules2")):
        assert request_key(*changed, cc) != base
    cc.image_side = 512
    assert request_key("photo", "ref", "http://x/v1", "m", "rules", cc) != base


def test_endpoints_and_keys(tmp_path, monkeypatch):
    cfg = load_config()
    ep = endpoint(cfg.caption)
    assert (ep.base_url, ep.key_env) == ("https://api.x.ai/v1", "XAI_API_KEY")
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="needs an API key in the environment variable XAI_API_KEY"):
        api_key(ep)
    (tmp_path / ".env").write_text("XAI_API_KEY=xai-from-file\n")
    assert api_key(ep, tmp_path / ".env") == "xai-from-file"
    monkeypatch.setenv("XAI_API_KEY", "xai-from-env")
    assert api_key(ep, tmp_path / ".env") == "xai-from-env"
    assert "XAI_API_KEY" not in os.environ.get("LOOKALIKE_TEST_NEVER", "")
    with pytest.raises(ConfigError, match="--env-file"):
        api_key(ep, tmp_path / "missing.env")

    assert api_key(endpoint(load_config(overrides=["caption.provider=ollama"]).caption)) == "not-needed"
    with pytest.raises(ConfigError, match="needs caption.base_url"):
        endpoint(load_config(overrides=["caption.provider=custom"]).caption)
    with pytest.raises(ConfigError, match="caption.model is not set"):
        endpoint(load_config(overrides=["caption.provider=custom", "caption.base_url=http://h/v1"]).caption)
    gem = endpoint(load_config(overrides=["caption.provider=gemini"]).caption)
    assert gem.key_env == "GEMINI_API_KEY" and gem.image_tokens == "gemini"

    redact = Redactor("sk-secret-123")
    assert redact("bad key sk-secret-123 sent") == "bad key *** sent"
