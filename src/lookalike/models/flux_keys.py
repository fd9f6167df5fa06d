"""One key table for FLUX.1 weights, and the converters it drives.

One FLUX weight has three names:

    diffusers   transformer_blocks.0.attn.to_q            one Linear per projection
    BFL         double_blocks.0.img_attn.qkv              q, k and v fused along the output dimension
    kohya       lora_unet_double_blocks_0_img_attn_qkv    the BFL module path with "." replaced by "_"

BFL is the original black-forest-labs layout, the one in ComfyUI's `flux1-dev.safetensors`; kohya
(sd-scripts `lora_flux`) is what ComfyUI and most LoRA sharing sites expect. `DOUBLE`, `SINGLE` and
`GLOBAL` below list every correspondence once; the converters only read them.

All converters are pure functions on `dict[str, torch.Tensor]`. Diffusers module names are written
without the `transformer.` prefix (as `named_modules()` and PEFT's `alpha_pattern` spell them); LoRA
state dicts use the prefix, as `FluxPipeline.save_lora_weights` writes them, and accept it missing.

Single-file loading of a tiny model (diffusers 0.42.1): `FluxTransformer2DModel.from_single_file`
converts a BFL file with `convert_flux_transformer_checkpoint_to_diffusers`, which hard-codes
`inner_dim = 3072` and `mlp_ratio = 4.0` to split `single_blocks.{i}.linear1` into q, k, v and
proj_mlp, and ignores the `config` it is handed. On any other width `torch.split` fails
("split_with_sizes expects split_sizes to sum exactly to ..."), so only real-size FLUX loads that way.
`transformer_from_bfl` is the inverse that reads the width from the file, for the tiny twin.
(A single file in *diffusers* key layout does load on tiny configs: diffusers skips conversion then.)

diffusers' kohya importer (`_convert_kohya_flux_lora_to_diffusers`, 0.42.1) returns LoRA keys for
the GLOBAL modules (img_in, txt_in, time_in, vector_in, guidance_in, final_layer) without the
`transformer.` prefix, and `load_lora_weights` then drops them silently; block LoRAs load fine.
`lora_from_kohya` has no such gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from lookalike.errors import LoraError, ModelLoadError

_LINEAR = (("weight", "weight"), ("bias", "bias"))
_RMS_NORM = (("weight", "scale"),)  # diffusers' RMSNorm.weight is BFL's QKNorm `scale`


@dataclass(frozen=True)
class Entry:
    """diffusers modules `members` (outputs concatenated in this order) ⇄ one BFL module `bfl`."""

    members: tuple[str, ...]
    bfl: str
    params: tuple[tuple[str, str], ...] = _LINEAR  # (diffusers parameter, BFL parameter)
    # BFL's final AdaLN emits (shift, scale), diffusers' emits (scale, shift): output rows swap halves.
    swap_halves: bool = False
    # diffusers' kohya importer drops `.alpha` for final_layer keys (its "TODO: alphas"), so the LoRA
    # scale is folded into lora_up and `.alpha` written as the rank: every reader then agrees.
    fold_scale: bool = False


def _e(members: str | tuple[str, ...], bfl: str, **kw) -> Entry:
    return Entry(members if isinstance(members, tuple) else (members,), bfl, **kw)


# Double-stream block: transformer_blocks.{i} ⇄ double_blocks.{i}.
DOUBLE = (
    _e(("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.qkv"),
    _e("attn.to_out.0", "img_attn.proj"),
    _e(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn.qkv"),
    _e("attn.to_add_out", "txt_attn.proj"),
    _e("ff.net.0.proj", "img_mlp.0"),
    _e("ff.net.2", "img_mlp.2"),
    _e("ff_context.net.0.proj", "txt_mlp.0"),
    _e("ff_context.net.2", "txt_mlp.2"),
    _e("norm1.linear", "img_mod.lin"),
    _e("norm1_context.linear", "txt_mod.lin"),
    _e("attn.norm_q", "img_attn.norm.query_norm", params=_RMS_NORM),
    _e("attn.norm_k", "img_attn.norm.key_norm", params=_RMS_NORM),
    _e("attn.norm_added_q", "txt_attn.norm.query_norm", params=_RMS_NORM),
    _e("attn.norm_added_k", "txt_attn.norm.key_norm", params=_RMS_NORM),
)
# Single-stream block: single_transformer_blocks.{i} ⇄ single_blocks.{i}. linear1's output rows are
# [q (inner), k (inner), v (inner), mlp (4·inner)]; single blocks have no attn.to_out.
SINGLE = (
    _e(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear1"),
    _e("proj_out", "linear2"),
    _e("norm.linear", "modulation.lin"),
    _e("attn.norm_q", "norm.query_norm", params=_RMS_NORM),
    _e("attn.norm_k", "norm.key_norm", params=_RMS_NORM),
)
GLOBAL = (
    _e("x_embedder", "img_in"),
    _e("context_embedder", "txt_in"),
    _e("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
    _e("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
    _e("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
    _e("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
    _e("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
    _e("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
    _e("norm_out.linear", "final_layer.adaLN_modulation.1", swap_halves=True, fold_scale=True),
    _e("proj_out", "final_layer.linear", fold_scale=True),
)
# (diffusers block list, BFL block list, entries)
BLOCKS = (("transformer_blocks", "double_blocks", DOUBLE), ("single_transformer_blocks", "single_blocks", SINGLE))

PEFT_PREFIX = "transformer."
KOHYA_PREFIX = "lora_unet_"
_COMFY_PREFIX = "model.diffusion_model."  # full ComfyUI checkpoints nest the transformer here


@dataclass(frozen=True)
class Slot:
    """One table entry placed in the model: `Entry` plus its block prefix (empty for GLOBAL)."""

    entry: Entry
    diffusers_prefix: str = ""  # "transformer_blocks.3."
    bfl_prefix: str = ""  # "double_blocks.3."

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(self.diffusers_prefix + m for m in self.entry.members)

    @property
    def bfl(self) -> str:
        return self.bfl_prefix + self.entry.bfl

    @property
    def kohya(self) -> str:
        return KOHYA_PREFIX + self.bfl.replace(".", "_")


def _find(name: str, sep: str, side: str) -> tuple[Slot, int] | None:
    """Look up a module `name` on one `side` ("diffusers", "bfl" or "kohya"); -> (slot, member index)."""
    for d_blocks, b_blocks, entries in BLOCKS:
        head = (d_blocks if side == "diffusers" else b_blocks) + sep
        index, _, rest = name.removeprefix(head).partition(sep)
        if name.startswith(head) and index.isdigit():
            return _match(rest, entries, side, f"{d_blocks}.{index}.", f"{b_blocks}.{index}.")
    return _match(name, GLOBAL, side, "", "")


def _match(rest: str, entries: Iterable[Entry], side: str, d_prefix: str, b_prefix: str) -> tuple[Slot, int] | None:
    for entry in entries:
        if side == "diffusers" and rest in entry.members:
            return Slot(entry, d_prefix, b_prefix), entry.members.index(rest)
        if side != "diffusers" and rest == (entry.bfl if side == "bfl" else entry.bfl.replace(".", "_")):
            return Slot(entry, d_prefix, b_prefix), 0
    return None


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first])


# --- Transformer weights -------------------------------------------------------------------------


def transformer_to_bfl(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `FluxTransformer2DModel` state dict -> BFL / ComfyUI single-file layout.

    Fused modules concatenate their members' weights and biases along dim 0, e.g.
    `single_blocks.{i}.linear1.weight` is (3·inner + mlp, inner). Raises ModelLoadError for a key
    the table does not know or a fused module with members missing.
    """
    groups: dict[tuple[Slot, str], dict[int, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        found = _find(module, ".", "diffusers")
        if found is None or param not in dict(found[0].entry.params):
            raise ModelLoadError(f"transformer weight {key!r} has no entry in the FLUX key table; is it FLUX.1?")
        groups.setdefault((found[0], param), {})[found[1]] = tensor
    out = {}
    for (slot, param), parts in groups.items():
        if len(parts) != len(slot.members):
            missing = [m for j, m in enumerate(slot.members) if j not in parts]
            raise ModelLoadError(f"cannot build {slot.bfl}.{param}: the state dict lacks {missing}")
        fused = torch.cat([parts[j] for j in range(len(parts))]) if len(parts) > 1 else parts[0]
        fused = _swap_halves(fused) if slot.entry.swap_halves else fused
        out[f"{slot.bfl}.{dict(slot.entry.params)[param]}"] = fused
    return out


def transformer_from_bfl(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL / ComfyUI single-file layout -> diffusers state dict, for any model width.

    The width `inner` is read from `img_in.weight` (inner, in_channels). In every fused module all
    members but the last are `inner` rows wide and the last takes the rest (v in qkv, proj_mlp in
    linear1). Split tensors are views into the inputs.
    """
    sd = {k.removeprefix(_COMFY_PREFIX): v for k, v in state_dict.items()}
    if "img_in.weight" not in sd:
        raise ModelLoadError("not a FLUX.1 BFL checkpoint: it has no 'img_in.weight'")
    inner = sd["img_in.weight"].shape[0]
    out = {}
    for key, tensor in sd.items():
        module, _, param = key.rpartition(".")
        found = _find(module, ".", "bfl")
        to_diffusers = {b: d for d, b in found[0].entry.params} if found else {}
        if param not in to_diffusers:
            raise ModelLoadError(f"checkpoint weight {key!r} has no entry in the FLUX key table; is it FLUX.1?")
        slot = found[0]
        if slot.entry.swap_halves:
            tensor = _swap_halves(tensor)
        k = len(slot.members)
        sizes = [inner] * (k - 1) + [tensor.shape[0] - inner * (k - 1)]
        for name, part in zip(slot.members, tensor.split(sizes)):
            out[f"{name}.{to_diffusers[param]}"] = part
    return out


# --- LoRA ----------------------------------------------------------------------------------------


def module_out_features(model: torch.nn.Module) -> dict[str, int]:
    """Output width of every Linear in `model`, by diffusers module name; works on a meta-device
    model and looks through PEFT wrappers (`attn.to_q.base_layer` counts as `attn.to_q`)."""
    return {
        name.removesuffix(".base_layer"): m.out_features
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".lora_" not in name
    }


def _lora_slot(module: str, side: str, key: str) -> tuple[Slot, int]:
    """Table lookup for a LoRA'd module on `side` ("diffusers" or "kohya"); LoraError naming `key`."""
    found = _find(module, "." if side == "diffusers" else "_", side)
    if found is None or found[0].entry.params != _LINEAR:  # norms are not Linear: no LoRA there
        raise LoraError(f"LoRA key {key!r} has no entry in the FLUX key table; is it a LoRA for another model?")
    return found


def _peft_factors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (lora_A (r, in), lora_B (out, r))} from a diffusers/PEFT LoRA state dict."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix(PEFT_PREFIX)
        module, _, suffix = name.rpartition(".lora_")
        if suffix not in ("A.weight", "B.weight"):
            raise LoraError(
                f"LoRA key {key!r} is not a diffusers/PEFT LoRA weight ('<module>.lora_A.weight' or '.lora_B.weight')"
            )
        halves.setdefault(module, {})[suffix[0]] = tensor
    for module, ab in halves.items():
        if len(ab) != 2:
            raise LoraError(f"LoRA module {module!r} has lora_{''.join(ab)} but not lora_{'B' if 'A' in ab else 'A'}")
    return {m: (ab["A"], ab["B"]) for m, ab in halves.items()}


def _width(module_dims: Mapping[str, int], module: str) -> int:
    if module not in module_dims:
        # Reached by a LoRA for a model with more blocks (import) as well as by a caller's incomplete
        # module_dims (export), so the message fits both.
        raise LoraError(
            f"the model has no module {module!r} (module_dims = module_out_features(transformer) lists its "
            "modules): the LoRA was made for a model with other blocks"
        )
    return module_dims[module]


def _alpha_for(alpha: float | Mapping[str, float], module: str) -> float:
    if not isinstance(alpha, Mapping):
        return float(alpha)
    for name in (module, PEFT_PREFIX + module):
        if name in alpha:
            return float(alpha[name])
    raise LoraError(f"no LoRA alpha given for module {module!r}; pass one float or an alpha for every module")


def lora_to_kohya(
    state_dict: Mapping[str, torch.Tensor],
    alpha: float | Mapping[str, float],
    module_dims: Mapping[str, int],
) -> dict[str, torch.Tensor]:
    """diffusers/PEFT LoRA -> kohya (sd-scripts `lora_flux`) LoRA with the same ΔW per module.

    PEFT applies ΔW = (alpha / r) · B @ A with r = A.shape[0]; `alpha` is the LoraConfig's
    lora_alpha, or one per module name. kohya applies (alpha / rank) · up @ down with
    rank = down.shape[0]. A fused module gets down = [A_1; …; A_k] (k·r, in) and the block-diagonal
    up = diag(B_1, …, B_k) (Σ out, k·r); members the LoRA does not target get zero blocks (r rows of
    down, `module_dims[member]` rows of up), so diffusers' importer sees exactly one r-wide block per
    member and splits it back. `module_dims` is `module_out_features(transformer)`.
    """
    by_slot: dict[Slot, dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for module, (a, b) in _peft_factors(state_dict).items():
        slot, member = _lora_slot(module, "diffusers", f"{PEFT_PREFIX}{module}.lora_A.weight")
        if b.shape[0] != _width(module_dims, module):
            raise LoraError(
                f"LoRA for {module!r} has {b.shape[0]} outputs but the model's module has "
                f"{module_dims[module]}: the LoRA was trained on another model size"
            )
        by_slot.setdefault(slot, {})[member] = (a, b, _alpha_for(alpha, module) / a.shape[0])
    out = {}
    for slot, factors in by_slot.items():
        down, up, scale = _fuse(slot, factors, module_dims)
        if slot.entry.swap_halves:
            up = _swap_halves(up)
        if slot.entry.fold_scale:
            up, scale = up * scale, 1.0
        out[f"{slot.kohya}.lora_down.weight"] = down
        out[f"{slot.kohya}.lora_up.weight"] = up
        out[f"{slot.kohya}.alpha"] = torch.tensor(scale * down.shape[0], dtype=torch.float32)
    return out


def _fuse(
    slot: Slot, factors: dict[int, tuple[torch.Tensor, torch.Tensor, float]], module_dims: Mapping[str, int]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """-> (down (k·r, in), up (Σ out, k·r), scale) for one slot; scale multiplies up @ down."""
    if len(slot.members) == 1:
        return factors[0]
    rank = max(a.shape[0] for a, _, _ in factors.values())
    a0, b0, scale = factors[min(factors)]
    downs, ups = [], []
    for j, member in enumerate(slot.members):
        if j not in factors:  # untargeted: a zero block keeps the layout one r-wide block per member
            downs.append(a0.new_zeros(rank, a0.shape[1]))
            ups.append(b0.new_zeros(_width(module_dims, member), rank))
            continue
        a, b, s = factors[j]
        pad = rank - a.shape[0]  # members with a smaller rank (PEFT rank_pattern): zero rows/columns
        downs.append(torch.nn.functional.pad(a, (0, 0, 0, pad)) if pad else a)
        b = torch.nn.functional.pad(b, (0, pad)) if pad else b
        ups.append(b if s == scale else b * (s / scale))  # one kohya alpha per fused module
    return torch.cat(downs), torch.block_diag(*ups), scale


def lora_from_kohya(
    state_dict: Mapping[str, torch.Tensor], module_dims: Mapping[str, int]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """kohya (sd-scripts `lora_flux`) LoRA -> (diffusers/PEFT LoRA state dict, alpha per module).

    ΔW per diffusers module = (alphas[m] / r_m) · B @ A, equal to the kohya file's. A fused module
    whose up is block-diagonal with one (rank/k)-wide block per member (what `lora_to_kohya` writes)
    splits into those blocks, dropping members whose blocks are all zero; any other fused module
    (kohya's own, one shared down) gives every member the whole down and its rows of up.
    `module_dims` (`module_out_features(transformer)`) gives the members' widths.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    slots: dict[str, Slot] = {}
    for key, tensor in state_dict.items():
        name, _, suffix = key.partition(".")
        if not name.startswith(KOHYA_PREFIX) or suffix not in ("lora_down.weight", "lora_up.weight", "alpha"):
            raise LoraError(f"LoRA key {key!r} is not a kohya FLUX transformer key ('lora_unet_<module>.lora_down...')")
        slots[name] = _lora_slot(name.removeprefix(KOHYA_PREFIX), "kohya", key)[0]
        parts.setdefault(name, {})[suffix] = tensor
    out, alphas = {}, {}
    for name, p in parts.items():
        if "lora_down.weight" not in p or "lora_up.weight" not in p:
            raise LoraError(f"kohya LoRA module {name!r} lacks its lora_down or lora_up weight")
        slot = slots[name]
        down, up = p["lora_down.weight"], p["lora_up.weight"]
        scale = (float(p["alpha"]) if "alpha" in p else down.shape[0]) / down.shape[0]
        up = _swap_halves(up) if slot.entry.swap_halves else up
        for module, a, b in _split(slot, down, up, module_dims):
            out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a
            out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b
            alphas[module] = scale * a.shape[0]
    return out, alphas


def _split(
    slot: Slot, down: torch.Tensor, up: torch.Tensor, module_dims: Mapping[str, int]
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """One fused kohya (down, up) -> [(member, A, B)]; clones, so the result saves with safetensors."""
    if len(slot.members) == 1:
        return [(slot.members[0], down, up)]
    sizes = [_width(module_dims, m) for m in slot.members]
    if sum(sizes) != up.shape[0]:
        raise LoraError(
            f"{slot.kohya}.lora_up has {up.shape[0]} rows but the model's {slot.members} have {sum(sizes)} "
            "outputs in all: the LoRA was trained on another model size"
        )
    ups = up.split(sizes)
    k, rank = len(slot.members), down.shape[0]
    r = rank // k
    blocks = [u[:, j * r : (j + 1) * r] for j, u in enumerate(ups)]
    if rank % k == 0 and all(torch.count_nonzero(u) == torch.count_nonzero(bl) for u, bl in zip(ups, blocks)):
        downs = down.split(r)
        return [
            (m, a.clone(), bl.clone())
            for m, a, bl in zip(slot.members, downs, blocks)
            if torch.count_nonzero(a) or torch.count_nonzero(bl)
        ]
    return [(m, down.clone(), u.clone()) for m, u in zip(slot.members, ups)]
