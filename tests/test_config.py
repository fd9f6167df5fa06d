"""The run config: defaults, presets, precedence, round trips and the wording of its errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.config import (
    PRESETS_DIR,
    Config,
    config_to_yaml,
    iter_fields,
    load_config,
    preset_names,
    save_config,
)
from lookalike.errors import ConfigError

# The FLUX.1-dev recipe (the seed table); the pydantic defaults and the flux1-dev preset carry it.
SEED_TABLE = {
    "model.source": "black-forest-labs/FLUX.1-dev",
    "lora.rank": 32,
    "lora.alpha": 16.0,
    "lora.targets": ["to_q", "to_k", "to_v", "to_out.0"],
    "train.learning_rate": 1e-4,
    "train.weight_decay": 1e-4,
    "train.batch_size": 8,
    "train.gradient_checkpointing": True,
    "train.precision": "bf16",
    "dataset.resolution": 1024,
    "generate.width": 1024,
    "generate.height": 1024,
    "generate.steps": 28,
    "generate.guidance": 3.5,
}
TINY = {
    "model.source": "lookalike:tiny-twin",
    "runtime.device": "cpu",
    "dataset.resolution": 64,
    "lora.rank": 4,
    "lora.alpha": 2.0,
    "train.batch_size": 2,
    "train.gradient_checkpointing": False,
    "train.precision": "fp32",
    "generate.width": 64,
    "generate.height": 64,
    "generate.steps": 4,
    "generate.guidance": 3.5,
    "generate.max_sequence_length": 32,
}


def get(cfg: Config, dotted: str):
    """cfg.lora.rank for 'lora.rank'."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(*args, **kwargs) -> str:
    """The message of the ConfigError that load_config raises."""
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    assert info.value.__suppress_context__ or info.value.__context__ is None  # no pydantic traceback
    return str(info.value)


def test_defaults_are_the_seed_table():
    cfg = Config()
    for key, want in SEED_TABLE.items():
        assert get(cfg, key) == want, key
    assert cfg.preset == "flux1-dev"
    assert (cfg.runtime.device, cfg.runtime.dtype, cfg.dataset.trigger) == ("auto", "auto", "Arthur")
    assert (cfg.generate.seeds, cfg.generate.max_sequence_length, cfg.generate.loras) == ([0], 512, [])


def test_presets_ship_in_the_package():
    assert PRESETS_DIR.is_dir()
    assert PRESETS_DIR.parent == Path(sys.modules["lookalike"].__file__).parent
    assert preset_names() == ["flux1-dev", "flux2-dev", "flux2-klein-4b", "flux2-klein-9b", "qwen-image", "tiny",
                              "tiny-flux2", "tiny-flux2-klein", "tiny-qwen-image", "tiny-z-image", "toy", "z-image"]


def test_flux1_dev_preset_spells_out_the_seed_table():
    text = (PRESETS_DIR / "flux1-dev.yaml").read_text()
    for key in SEED_TABLE:
        assert f"{key.split('.')[-1]}:" in text, key
    cfg = load_config(preset="flux1-dev")
    # the defaults, and the identity recipe (issue 19): held-out photos, drawn grounding images, EMA
    identity = load_config(preset="flux1-dev", overrides=["dataset.holdout=0", "ground.count=0", "ground.phrases=[]",
                                                          "train.grounding_weight=1", "train.ema_decay=0"])
    assert identity.model_copy(update={"preset": Config().preset}) == Config()
    assert (cfg.dataset.holdout, cfg.ground.count, cfg.train.ema_decay) == (4, 40, 0.99) and len(cfg.ground.phrases) == 6


def test_tiny_preset_values():
    cfg = load_config(preset="tiny")
    for key, want in TINY.items():
        assert get(cfg, key) == want, key
    assert cfg.preset == "tiny"
    assert cfg.lora.alpha != cfg.lora.rank


def test_every_field_has_a_type_default_and_help():
    rows = list(iter_fields())
    keys = [key for key, *_ in rows]
    assert {"lora.rank", "train.guidance", "generate.loras", "generate.loras[].weight"} <= set(keys)
    for key, type_text, _default, help_text in rows:
        assert type_text and help_text.strip(), key
    assert dict((k, d) for k, _, d, _ in rows)["generate.loras[].weight"] == 1.0


def test_precedence_preset_then_file_then_overrides(tmp_path):
    path = write(tmp_path, "preset: tiny\nlora:\n  rank: 8\ngenerate:\n  steps: 10\n")
    cfg = load_config(path, overrides=["generate.steps=12"])
    assert cfg.preset == "tiny"
    assert cfg.lora.alpha == 2.0  # from the preset, deep-merged under the file's lora.rank
    assert cfg.lora.rank == 8  # the file beats the preset
    assert cfg.generate.steps == 12  # the override beats the file
    assert cfg.generate.width == 64  # untouched preset value


def test_preset_argument_beats_the_files_preset_key(tmp_path):
    path = write(tmp_path, "preset: tiny\n")
    assert load_config(path, preset="flux1-dev").generate.width == 1024
    assert load_config(path).preset == "tiny"


def test_unknown_preset_lists_the_valid_ones():
    message = config_error(preset="flux-dev")
    assert "'flux-dev'" in message and "Valid presets: flux1-dev, flux2-dev" in message and "tiny" in message


def test_lists_replace_rather_than_merge(tmp_path):
    path = write(tmp_path, "lora:\n  targets: [to_q]\n")
    assert load_config(path).lora.targets == ["to_q"]


def test_unknown_nested_key_names_path_file_and_suggestion(tmp_path):
    message = config_error(write(tmp_path, "lora:\n  rnak: 16\n"))
    assert message == (
        f"{tmp_path / 'config.yaml'}: unknown key 'lora.rnak'; did you mean 'lora.rank'? "
        "Valid keys in 'lora': rank, alpha, targets"
    )


def test_unknown_section_suggests_the_section(tmp_path):
    message = config_error(write(tmp_path, "lorra:\n  rank: 16\n"))
    assert "unknown key 'lorra'" in message and "did you mean 'lora'?" in message


def test_flattened_key_at_top_level_suggests_the_dotted_key(tmp_path):
    message = config_error(write(tmp_path, "lora_rnak: 16\n"))
    assert "unknown key 'lora_rnak'; did you mean 'lora.rank'?" in message


def test_unknown_key_inside_a_lora_item(tmp_path):
    message = config_error(write(tmp_path, "generate:\n  loras:\n    - path: a.safetensors\n      nmae: me\n"))
    assert "unknown key 'generate.loras[0].nmae'" in message
    assert "did you mean 'generate.loras[0].name'?" in message


def test_width_not_multiple_of_16(tmp_path):
    message = config_error(write(tmp_path, "generate:\n  width: 1000\n"))
    assert "generate.width = 1000: must be a multiple of 16" in message
    assert "try 992 or 1008" in message


@pytest.mark.parametrize("rank", [0, -4])
def test_rank_must_be_positive(tmp_path, rank):
    message = config_error(write(tmp_path, f"lora:\n  rank: {rank}\n"))
    assert f"lora.rank = {rank}: must be greater than 0" in message


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("generate:\n  steps: abc\n", "generate.steps = 'abc': expected an integer"),
        ("generate:\n  steps: 2.5\n", "generate.steps = 2.5: expected an integer"),
        ("train:\n  gradient_checkpointing: 1\n", "train.gradient_checkpointing = 1: expected true or false"),
        ("train:\n  learning_rate: fast\n", "train.learning_rate = 'fast': expected a number"),
        ("runtime:\n  device: gpu\n", "runtime.device = 'gpu': expected auto, cpu, cuda"),
        ("train:\n  precision: bf32\n", "train.precision = 'bf32': expected one of"),
        ("dataset:\n  trigger: '  '\n", "dataset.trigger = '  ': must not be empty"),
        ("generate:\n  max_sequence_length: 513\n", "generate.max_sequence_length = 513: must be at most 512"),
        ("lora: 5\n", "lora = 5: expected a mapping with keys rank, alpha, targets"),
    ],
)
def test_bad_values_name_key_value_and_fix(tmp_path, yaml_text, expected):
    assert expected in config_error(write(tmp_path, yaml_text))


def test_ints_are_fine_floats_and_exponents_parse(tmp_path):
    cfg = load_config(write(tmp_path, "lora:\n  alpha: 8\ntrain:\n  learning_rate: 2e-4\n"))
    assert cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)
    assert cfg.train.learning_rate == 2e-4


def test_negative_lora_weight_is_accepted(tmp_path):
    cfg = load_config(write(tmp_path, "generate:\n  loras:\n    - {path: a.safetensors, weight: -0.5}\n"))
    assert cfg.generate.loras[0].weight == -0.5
    assert cfg.generate.loras[0].name is None


def test_string_lora_weight_is_refused(tmp_path):
    message = config_error(write(tmp_path, "generate:\n  loras: [{path: a.safetensors, weight: strong}]\n"))
    assert "generate.loras[0].weight = 'strong': expected a number" in message


def test_several_errors_are_all_reported(tmp_path):
    path = write(tmp_path, "lora:\n  rank: 0\n  rnak: 3\ngenerate:\n  width: 1000\n  steps: abc\n")
    lines = config_error(path).splitlines()
    assert lines[0] == "4 problems in the run config:"
    body = "\n".join(lines[1:])
    for fragment in ["lora.rank = 0", "'lora.rnak'", "generate.width = 1000", "generate.steps = 'abc'"]:
        assert fragment in body
    assert len(lines) == 5


def test_override_values_are_yaml():
    cfg = load_config(overrides=["generate.seeds=[1,2]", "lora.alpha=8", "model.source=/x/y", "train.gradient_checkpointing=false"])
    assert cfg.generate.seeds == [1, 2]
    assert cfg.lora.alpha == 8.0
    assert cfg.model.source == "/x/y"
    assert cfg.train.gradient_checkpointing is False


def test_override_of_string_field_keeps_the_text():
    assert load_config(overrides=["model.revision=0123"]).model.revision == "0123"


def test_override_can_pick_the_preset():
    assert load_config(overrides=["preset=tiny"]).generate.width == 64


@pytest.mark.parametrize("bad", ["lora.rank", "=3", "lora..rank=3"])
def test_bad_override_form_shows_expected_form(bad):
    assert "section.key=value" in config_error(overrides=[bad])


def test_override_of_unknown_key_suggests():
    message = config_error(overrides=["lora.rnak=3"])
    assert "unknown key 'lora.rnak'; did you mean 'lora.rank'?" in message
    assert "override 'lora.rnak=3'" in message


def test_bad_override_value_names_the_override():
    assert "override 'generate.steps=many'" in config_error(overrides=["generate.steps=many"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "lora:\n  rank: 4\n  targets: [to_q\n")
    message = config_error(path)
    assert str(path) in message and "line 4" in message


def test_duplicate_yaml_key_is_an_error(tmp_path):
    message = config_error(write(tmp_path, "lora:\n  rank: 4\n  rank: 8\n"))
    assert "duplicate key 'rank'" in message and "line 3" in message


def test_non_mapping_top_level(tmp_path):
    assert "top level must be a mapping" in config_error(write(tmp_path, "- lora\n- train\n"))


def test_missing_file_names_the_path(tmp_path):
    assert str(tmp_path / "nope.yaml") in config_error(tmp_path / "nope.yaml")


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == load_config(preset="flux1-dev")
    assert load_config(write(tmp_path, "lora:\n  # rank: 8\n")) == load_config(preset="flux1-dev")


@pytest.mark.parametrize("preset", ["flux1-dev", "tiny"])
@pytest.mark.parametrize("comments", [True, False])
def test_yaml_round_trip(tmp_path, preset, comments):
    cfg = load_config(preset=preset, overrides=["generate.loras=[{path: me.safetensors, weight: -0.5}]", "dataset.trigger='1e5'"])
    path = write(tmp_path, config_to_yaml(cfg, comments=comments))
    assert load_config(path) == cfg


def test_comments_carry_the_help():
    text = config_to_yaml(Config())
    assert "rank: 32" in text and "# LoRA rank" in text
    for key, _type, _default, help_text in iter_fields():
        if "[]" not in key:
            assert help_text in text, key


def test_save_config_is_atomic_and_loads_back(tmp_path):
    cfg = load_config(preset="tiny", overrides=["lora.rank=6"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    save_config(cfg, path)  # replacing an existing file works too
    assert load_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left behind


def test_assignment_is_validated():
    cfg = Config()
    with pytest.raises(ValueError):
        cfg.lora.rank = 0


def test_import_loads_no_torch_or_diffusers():
    code = "import lookalike.config, sys; assert not {'torch', 'diffusers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
