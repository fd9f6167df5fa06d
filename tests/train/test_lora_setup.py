"""LoRA set-up on the twin's transformer: targets, freezing, fp32 weights, unchanged start."""

import pytest
import torch

from lookalike.config import load_config
from lookalike.errors import ConfigError
from lookalike.train.lora import add_lora, lora_state_dict


@pytest.fixture
def transformer(twin_dir):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(twin_dir, subfolder="transformer", torch_dtype=torch.bfloat16)


def _forward(t):
    torch.manual_seed(0)
    x, txt = torch.randn(1, 16, 64), torch.randn(1, 8, 32)
    ids = torch.zeros(16, 3)
    with torch.no_grad():
        return t(hidden_states=x.to(t.dtype), encoder_hidden_states=txt.to(t.dtype),
                 pooled_projections=torch.randn(1, 32).to(t.dtype), timestep=torch.tensor([0.5]),
                 guidance=torch.tensor([1.0]), txt_ids=torch.zeros(8, 3), img_ids=ids).sample


def test_seed_targets_wrap_attention_in_both_block_kinds(transformer):
    before = _forward(transformer)
    summary = add_lora(transformer, rank=4, alpha=2.0, targets=load_config(preset="tiny").lora.targets)
    # 2 double blocks x (q, k, v, out) + 2 single blocks x (q, k, v)
    assert len(summary.modules) == 14
    assert "transformer_blocks.0.attn.to_out.0" in summary.modules
    assert "single_transformer_blocks.1.attn.to_v" in summary.modules
    trainable = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable)
    frozen = [p for n, p in transformer.named_parameters() if not p.requires_grad]
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert summary.trainable == sum(p.numel() for _, p in trainable)
    assert torch.equal(_forward(transformer), before)  # B starts at zero


def test_presets_wrap_more_modules(twin_dir):
    from diffusers import FluxTransformer2DModel

    counts = {}
    for preset in ("seed", "attention", "all-linear"):
        t = FluxTransformer2DModel.from_pretrained(twin_dir, subfolder="transformer")
        targets = load_config(preset="tiny", overrides=[f"lora.targets={preset}"]).lora.targets
        counts[preset] = len(add_lora(t, 4, 2.0, targets).modules)
    assert counts["seed"] < counts["attention"] < counts["all-linear"]
    assert counts["attention"] == 14 + 2 * 4  # adds add_q/k/v_proj and to_add_out in double blocks


def test_init_is_seeded(twin_dir):
    from diffusers import FluxTransformer2DModel

    states = []
    for _ in range(2):
        t = FluxTransformer2DModel.from_pretrained(twin_dir, subfolder="transformer")
        add_lora(t, 4, 2.0, ["to_q"], seed=7)
        states.append(lora_state_dict(t))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_targets_that_match_nothing_name_the_setting(transformer):
    with pytest.raises(ConfigError, match=r"lora.targets = \['to_qq'\]"):
        add_lora(transformer, 4, 2.0, ["to_qq"])
