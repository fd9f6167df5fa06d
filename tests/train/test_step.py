"""The training step on the twin: it matches FluxPipeline's own call, and LoRA training lowers the loss."""

import torch

from lookalike.train.lora import add_lora
from lookalike.config import TrainConfig
from lookalike.train.step import Batch, fixed_noise_loss, predict_velocity, training_loss


def _batch(pipe, n=4, size=64, seed=0):
    """Real cached-style inputs from the twin: VAE latents of random images, encoded captions."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        raw = pipe.vae.encode(images).latent_dist.sample(generator=g)
        latents = (raw - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        t5, pooled, _ = pipe.encode_prompt([f"Arthur in photo {i}" for i in range(n)], None, max_sequence_length=32)
    return Batch(latents, t5, pooled)


def test_predict_velocity_matches_the_pipeline_transformer_call(twin_pipe):
    from diffusers import FluxPipeline

    batch = _batch(twin_pipe, n=2)
    z = torch.randn_like(batch.latents)
    sigma = torch.tensor([0.3, 0.8])
    ours = predict_velocity(twin_pipe.transformer, z, sigma, batch, guidance=3.5)
    # the same call spelled with diffusers' own helpers, as FluxPipeline.__call__ makes it
    h, w = z.shape[2:]
    with torch.no_grad():
        theirs = twin_pipe.transformer(
            hidden_states=FluxPipeline._pack_latents(z, 2, 16, h, w), timestep=sigma, guidance=torch.full((2,), 3.5),
            pooled_projections=batch.pooled, encoder_hidden_states=batch.t5, txt_ids=torch.zeros(32, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(2, h // 2, w // 2, "cpu", torch.float32),
            return_dict=False)[0]
    assert torch.allclose(ours, FluxPipeline._unpack_latents(theirs, h * 8, w * 8, 8), atol=1e-6)


def test_training_loss_is_seeded_and_returns_sigmas(twin_pipe):
    batch = _batch(twin_pipe, n=2)
    a = training_loss(twin_pipe.transformer, batch, TrainConfig(), torch.Generator().manual_seed(1))
    b = training_loss(twin_pipe.transformer, batch, TrainConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].shape == (2,)


def test_lora_training_lowers_the_fixed_noise_loss(twin_dir, twin_pipe):
    from diffusers import FluxTransformer2DModel

    batch = _batch(twin_pipe)
    transformer = FluxTransformer2DModel.from_pretrained(twin_dir, subfolder="transformer")
    add_lora(transformer, rank=4, alpha=4.0, targets=["to_q", "to_k", "to_v", "to_out.0"])
    params = [p for p in transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-4)
    train, sigmas = TrainConfig(), torch.tensor([0.25, 0.5, 0.75])
    before = fixed_noise_loss(transformer, batch, sigmas, train.guidance).item()
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss, _ = training_loss(transformer, batch, train, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_noise_loss(transformer, batch, sigmas, train.guidance).item()
    assert after < 0.95 * before, (before, after)
    assert all(not p.requires_grad for n, p in transformer.named_parameters() if "lora_" not in n)


def test_gradient_checkpointing_gives_the_same_lora_gradients(twin_dir):
    """Checkpointing recomputes activations; with a frozen base and inputs that need no grad it must
    still reach the LoRA weights (a reentrant checkpoint would silently give them no gradient)."""
    from lookalike.models.flux import load_transformer, resolve_source

    train = TrainConfig()
    grads = []
    for checkpointing in (False, True):
        transformer = load_transformer(resolve_source(str(twin_dir)), torch.float32)
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        add_lora(transformer, 4, 2.0, ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
        transformer.train()
        g = torch.Generator().manual_seed(0)
        batch = Batch(torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 32, 32, generator=g),
                      torch.randn(2, 32, generator=g))
        loss, _ = training_loss(transformer, batch, train, torch.Generator().manual_seed(1))
        loss.backward()
        grads.append([p.grad for p in transformer.parameters() if p.requires_grad])
    assert len(grads[0]) == len(grads[1]) and all(b is not None for b in grads[1])
    assert sum(float(b.abs().sum()) for b in grads[1]) > 0  # lora_B gets gradient (lora_A's is 0 while B is 0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
