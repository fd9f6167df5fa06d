"""Z-Image and Qwen-Image from photos to a LoRA and images (`fit`, then `generate` with the run's LoRA), on
their tiny twins; and the config refusing a setting that means nothing for the chosen family."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import make_photos

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-z-image", "tiny-qwen-image"])
def test_fit_then_generate_on_the_twin(preset, tmp_path):
    from lookalike.config import LoraSpec, load_config
    from lookalike.generate import generate_to_folder
    from lookalike.models import comfy_rules
    from lookalike.models.family import family_of_folder
    from lookalike.models.twin import ensure_twin
    from lookalike.pipeline import FitOptions, fit, steps_epochs
    from lookalike.rundir import RunDir

    photos = make_photos(tmp_path / "photos", n=4)
    family = family_of_folder(ensure_twin(preset.removeprefix("tiny-")))
    cfg = load_config(None, preset=preset, overrides=[*steps_epochs(4, None), "train.sample_every=1",
                                                      "train.checkpoint_every=2", "generate.negative_prompt=blurry"])
    cfg.dataset.photos, cfg.dataset.trigger = str(photos), "Arthur"
    rd = RunDir(tmp_path / "run")
    rd.config = cfg
    said = []
    result = fit(cfg, rd, FitOptions("lookalike fit", yes=True), said.append)

    # a LoRA in both export formats, trained (lora_B moved off its zero start), with the family's headers
    assert result.lora is not None and result.lora.is_file(), said
    lora = load_file(str(result.lora))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora.items())
    assert _metadata(result.lora)["modelspec.architecture"] == family.export["architecture"]
    comfy = result.lora.with_name("lora-kohya.safetensors")
    loaded = comfy_rules.match_file(comfy, family.name, {n: m.out_features for n, m in _linear_names(family)})
    assert loaded.patches and not loaded.unloaded
    # training drew preview images of the live model, against the negative prompt cached for them
    assert list(rd.root.glob("train/samples/epoch-*/*.png")), sorted(str(p) for p in rd.root.rglob("*.png"))
    from lookalike.data.cache import load_cache

    negative = load_cache(rd, family.name).negative
    assert negative.prompt == "blurry" and negative.cond["mask"].shape[0] == 1

    # the run's LoRA draws, and draws something else than the base on the same seed
    def draw(loras, folder):
        cfg.generate.loras = loras
        (path,) = generate_to_folder(cfg, ["Arthur as a wizard"], tmp_path / folder)
        return torch.tensor(list(Image.open(path).convert("RGB").getdata()), dtype=torch.float32)

    with_lora = draw([LoraSpec(path=str(result.lora))], "with")
    assert (with_lora - draw([], "base")).abs().mean() > 0


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _linear_names(family):
    from lookalike.models.twin import build_twin

    transformer = build_twin(family=family.name).transformer
    return [(n, m) for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("preset, setting, family", [
    ("tiny-z-image", "generate.guidance=5.0", "Z-Image"),
    ("tiny-qwen-image", "train.guidance=2.0", "Qwen-Image"),
    ("tiny", "generate.cfg=3.0", "FLUX.1"),
    ("tiny-flux2", "generate.negative_prompt='blurry'", "FLUX.2 [dev]"),
])
def test_a_setting_that_means_nothing_for_the_family_is_refused(preset, setting, family):
    from lookalike.config import load_config
    from lookalike.errors import ConfigError
    from lookalike.models.source import model_and_family

    name = setting.split("=")[0]
    with pytest.raises(ConfigError) as e:
        model_and_family(load_config(None, preset=preset, overrides=[setting]))
    assert name in str(e.value) and family in str(e.value)
    # the preset alone, and the setting at its default, pass
    model_and_family(load_config(None, preset=preset))
    default = {"generate.guidance": 3.5, "train.guidance": 1.0, "generate.cfg": 4.0, "generate.negative_prompt": "''"}
    model_and_family(load_config(None, preset=preset, overrides=[f"{name}={default[name]}"]))


def test_generate_refuses_guidance_for_a_cfg_family_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lookalike", "generate", "--preset", "tiny-qwen-image", "--guidance",
                             "5", "--out", str(tmp_path / "out"), "Arthur"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "generate.guidance" in lines[0] and "Qwen-Image" in lines[0] and "generate.cfg" in lines[0]
    assert not (tmp_path / "out").exists()


def test_header_names_the_family():
    """Every family's export header names it, with its modelspec architecture (one json dump, no model)."""
    from lookalike.export import header
    from lookalike.models.family import families

    for f in families().values():
        meta = header("Arthur", 4, 2.0, ["to_q"], "twin", 1, family=f.name, resolution=64, captions=["Arthur"])
        assert meta["modelspec.architecture"] == f.export["architecture"], json.dumps(meta)[:500]
