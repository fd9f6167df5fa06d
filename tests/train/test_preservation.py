"""Class-prior / blank-prompt preservation (issue 19, part 1): the LoRA held to the base model's prediction."""

import torch

from lookalike.data.cache import class_caption


def test_class_caption_replaces_whole_word_triggers_only():
    assert class_caption("Arthur, smiling, with Arthur's dog; Arthurian", "Arthur", "a man") == \
        "a man, smiling, with a man's dog; Arthurian"


def test_preservation_loss_is_zero_untouched_and_the_on_off_mse_when_perturbed(fresh_pipe):
    from lookalike.train.lora import add_lora
    from lookalike.train.step import lora_disabled, preservation_loss

    transformer = fresh_pipe.transformer
    add_lora(transformer, rank=4, alpha=2.0, targets="seed", seed=0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 8, 8, generator=g)
    cond = {"t5": torch.randn(2, 8, 32, generator=g), "pooled": torch.randn(2, 32, generator=g)}
    sigma, weights = torch.tensor([0.3, 0.8]), torch.tensor([1.0, 2.0])
    assert preservation_loss(transformer, z, sigma, cond, 3.5, weights).item() == 0.0  # lora_B starts at 0
    with torch.no_grad():
        for n, p in transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=g)
    from lookalike.models.flux1 import predict_velocity

    with torch.no_grad():
        on = predict_velocity(transformer, z, sigma, cond, 3.5)
        with lora_disabled(transformer):
            off = predict_velocity(transformer, z, sigma, cond, 3.5)
    by_hand = (weights * ((on - off) ** 2).mean(dim=(1, 2, 3))).mean()
    got = preservation_loss(transformer, z, sigma, cond, 3.5, weights)
    assert got.item() > 0
    torch.testing.assert_close(got.detach(), by_hand, rtol=1e-5, atol=1e-8)
