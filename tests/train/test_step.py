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
    return Batch(latents, {"t5": t5, "pooled": pooled})


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
            pooled_projections=batch.cond["pooled"], encoder_hidden_states=batch.cond["t5"], txt_ids=torch.zeros(32, 3),
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
    from lookalike.models.source import load_transformer, resolve_source

    train = TrainConfig()
    grads = []
    for checkpointing in (False, True):
        transformer = load_transformer(resolve_source(str(twin_dir)), torch.float32)
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        add_lora(transformer, 4, 2.0, ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
        transformer.train()
        g = torch.Generator().manual_seed(0)
        batch = Batch(torch.randn(2, 16, 8, 8, generator=g),
                      {"t5": torch.randn(2, 32, 32, generator=g), "pooled": torch.randn(2, 32, generator=g)})
        loss, _ = training_loss(transformer, batch, train, torch.Generator().manual_seed(1))
        loss.backward()
        grads.append([p.grad for p in transformer.parameters() if p.requires_grad])
    assert len(grads[0]) == len(grads[1]) and all(b is not None for b in grads[1])
    assert sum(float(b.abs().sum()) for b in grads[1]) > 0  # lora_B gets gradient (lora_A's is 0 while B is 0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def _lora_twin(twin_dir, scale=0.0):
    """The twin's transformer with a LoRA; `scale` > 0 gives B random values so the LoRA changes the output."""
    from lookalike.models.source import load_transformer, resolve_source

    transformer = load_transformer(resolve_source(str(twin_dir)), torch.float32)
    add_lora(transformer, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return transformer


def _by_hand(transformer, batch, train, seed):
    """σ, ε as training_loss draws them from `seed`, and per item: the loss towards ε - z and towards the
    base model's prediction, computed directly. -> (σ [B], plain [B], prior [B], LoRA-on prediction)."""
    from lookalike.train.flow_matching import loss_weights, noisy_latents, sample_sigmas

    g = torch.Generator().manual_seed(seed)
    s = sample_sigmas(batch.latents.shape[0], train.density, logit_mean=train.logit_mean, logit_std=train.logit_std,
                      mode_scale=train.mode_scale, shift=train.shift, generator=g)
    eps = torch.randn(batch.latents.shape, generator=g)
    z_s = noisy_latents(batch.latents, eps, s)
    with torch.no_grad():
        on = predict_velocity(transformer, z_s, s, batch, train.guidance)
        transformer.disable_adapters()
        off = predict_velocity(transformer, z_s, s, batch, train.guidance)
        transformer.enable_adapters()
    w = loss_weights(s, train.weighting)
    per_item = lambda target: w * (on - target).pow(2).flatten(1).mean(1)  # noqa: E731
    return s, per_item(eps - batch.latents), per_item(off), on


def test_prior_items_are_trained_towards_the_base_models_own_prediction(twin_dir, twin_pipe):
    """dataset.grounding_target=base: a grounding item's target is what the model predicts with the LoRA
    off, so a LoRA that changes nothing has zero loss there, and one that changes the output is pulled back."""
    batch = _batch(twin_pipe, n=2)
    train = TrainConfig()
    prior = Batch(batch.latents, batch.cond, prior=torch.tensor([True, True]))
    untouched = _lora_twin(twin_dir)
    loss, _ = training_loss(untouched, prior, train, torch.Generator().manual_seed(1))
    assert loss.item() < 1e-10
    plain, _ = training_loss(untouched, batch, train, torch.Generator().manual_seed(1))
    assert plain.item() > 0.1  # the ordinary target ε - z is far from the base model's guess

    changed = _lora_twin(twin_dir, scale=0.5)
    loss, sigma = training_loss(changed, prior, train, torch.Generator().manual_seed(1))
    s, _, towards_base, on = _by_hand(changed, batch, train, seed=1)
    assert torch.equal(sigma, s)
    torch.testing.assert_close(loss, towards_base.mean(), rtol=1e-5, atol=1e-7)
    assert loss.item() > 1e-4
    loss.backward()  # the gradient reaches the LoRA, and the adapters are back on afterwards
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in changed.parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.equal(predict_velocity(changed, *_noised(batch, s, 1), batch, train.guidance), on)


def _noised(batch, s, seed):
    from lookalike.train.flow_matching import noisy_latents, sample_sigmas

    g = torch.Generator().manual_seed(seed)
    sample_sigmas(batch.latents.shape[0], generator=g)  # advance the generator past σ as training_loss does
    return noisy_latents(batch.latents, torch.randn(batch.latents.shape, generator=g), s), s


def test_a_mixed_batch_weights_prior_items_by_grounding_weight(twin_dir, twin_pipe):
    """Item 0 is the person's photo (target ε - z), item 1 a grounding photo (target: the base model)."""
    batch = _batch(twin_pipe, n=2)
    transformer = _lora_twin(twin_dir, scale=0.5)
    mixed = Batch(batch.latents, batch.cond, prior=torch.tensor([False, True]))
    _, plain, towards_base, _ = _by_hand(transformer, batch, TrainConfig(), seed=2)
    for weight in (1.0, 3.0):
        loss, _ = training_loss(transformer, mixed, TrainConfig(grounding_weight=weight), torch.Generator().manual_seed(2))
        torch.testing.assert_close(loss.detach(), (plain[0] + weight * towards_base[1]) / 2, rtol=1e-5, atol=1e-7)


def test_fixed_noise_loss_is_the_mean_over_items_and_sigmas_however_it_is_chunked(twin_pipe):
    """Every item at every σ, its noise fixed by the seed; forwards of at most max_rows rows."""
    from lookalike.train.flow_matching import flow_matching_loss, noisy_latents, velocity_target

    transformer, batch = twin_pipe.transformer, _batch(twin_pipe, n=2)
    sigmas = torch.tensor([0.2, 0.5, 0.9])
    whole = fixed_noise_loss(transformer, batch, sigmas, 3.5, seed=3, max_rows=6)
    assert torch.allclose(fixed_noise_loss(transformer, batch, sigmas, 3.5, seed=3, max_rows=4), whole, atol=1e-6)
    assert torch.equal(fixed_noise_loss(transformer, batch, sigmas, 3.5, seed=3, max_rows=6), whole)
    assert not torch.allclose(fixed_noise_loss(transformer, batch, sigmas, 3.5, seed=4, max_rows=6), whole)
    # by hand, one row at a time: item i at σ_j is row i·S + j of the seed's noise
    noise = torch.randn((6, *batch.latents.shape[1:]), generator=torch.Generator().manual_seed(3))
    losses = []
    with torch.no_grad():
        for r in range(6):
            i, s = divmod(r, 3)
            one = batch.rows(slice(i, i + 1))
            sigma = sigmas[s:s + 1]
            pred = predict_velocity(transformer, noisy_latents(one.latents, noise[r:r + 1], sigma), sigma, one, 3.5)
            losses.append(flow_matching_loss(pred, velocity_target(one.latents, noise[r:r + 1]), torch.ones(1)))
    assert torch.allclose(torch.stack(losses).mean(), whole, atol=1e-6)
