"""Which model weight ComfyUI patches with each LoRA tensor, and at what scale: its key rules, restated.

ComfyUI (GPL-3.0, not installable here, never copied) cannot run in lookalike's tests, so this module
states the rules its LoRA loader follows, as written down in `/work/shared/notes/comfyui-lora-keys.md`,
in lookalike's own code. `match(lora, family, modules)` answers, for one LoRA file:

* for every up/down pair a rule takes, a `Patch`: the *native* model weight it changes (ComfyUI's own
  layout: BFL names for FLUX), the rows of that weight when the file's module is one slice of a fused
  native weight (diffusers' separate q/k/v -> the fused `qkv` / `linear1`), and the scale
  (`alpha / rank` when the file has a `<module>.alpha` tensor, else 1.0: ComfyUI never reads the
  safetensors header);
* the keys no rule takes: what ComfyUI reports as `lora key not loaded: <key>`.

How the rules are built (ComfyUI builds a map from file-module name to model weight from the model):
for every module of the model, given by its diffusers name, each family knows its native weight and
the spellings a file may use. Every family takes `diffusion_model.<native>` and
`lora_unet_<native with . -> _>` (kohya); per family:

* ``flux1``, ``flux2-dev``, ``flux2-klein``: also the bare native name, and the diffusers name as
  `transformer.<name>`, bare `<name>`, `lora_transformer_<name with _>` (OneTrainer) and
  `lycoris_<name with _>`. Not `diffusion_model.<diffusers name>`. The FLUX.1 table is
  `flux_keys`'; the FLUX.2 one is below (`attn.to_qkv_mlp_proj` -> `linear1`, single-block
  `attn.to_out` -> `linear2`, `ff.linear_in/out` -> `img_mlp.0/2`).
* ``z-image`` (ComfyUI loads it as Lumina2): the diffusers name as `diffusion_model.`, `transformer.`,
  bare or `lycoris_`; `attention.to_q/k/v` are row slices of the native `attention.qkv`,
  `attention.to_out.0` is `attention.out`. The renames `all_x_embedder.2-1` -> `x_embedder` and
  `all_final_layer.2-1` -> `final_layer` are diffusers' single-file converter's (the notes do not list them).
* ``qwen-image``: native names are diffusers names; `<name>`, `transformer.`, `diffusion_model.`,
  `lycoris_`. (Qwen-Image 2.1's `img_mlp.gate_up` halves are not covered.)

Weight suffixes taken: `.lora_up/.lora_down.weight`, `.lora_B/.lora_A.weight`, `.lora.up/.lora.down.weight`,
`_lora.up/_lora.down.weight`, `.lora_linear_layer.up/down.weight`, `.lora_B/.lora_A.default.weight`, with
`.alpha`, `.dora_scale` and `.lora_mid.weight` riding along. ComfyUI also reads `.diff`/`.diff_b`, LoKr
and LoHa; lookalike never writes them and they are reported as not loaded here, so a check built on this
module errs on the strict side.

One point the notes leave open: FLUX's final `norm_out.linear` emits (scale, shift) in diffusers and
(shift, scale) natively; `Target.swap_halves` assumes ComfyUI swaps a LoRA's rows there as diffusers'
weight converter does. No preset of lookalike targets that module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from lookalike.models.flux_keys import BLOCKS as FLUX1_BLOCKS
from lookalike.models.flux_keys import GLOBAL as FLUX1_GLOBAL
from lookalike.models.flux_keys import Entry

# (up suffix, down suffix), in the order they are tried.
PAIRS: tuple[tuple[str, str], ...] = (
    (".lora_up.weight", ".lora_down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
)
EXTRAS = (".alpha", ".dora_scale", ".lora_mid.weight")
_SUFFIXES = sorted({s for pair in PAIRS for s in pair} | set(EXTRAS), key=len, reverse=True)



@dataclass(frozen=True)
class Target:
    """One native model weight a LoRA module changes; `rows` = [start, stop) of its output rows, or None
    for all of them; `swap_halves`: the native weight's two output halves are diffusers' swapped."""

    weight: str
    rows: tuple[int, int] | None = None
    swap_halves: bool = False


@dataclass(frozen=True)
class Patch:
    """One up/down pair of the file taken by a rule: the file's module name, its keys, target and scale."""

    module: str
    up: str
    down: str
    target: Target
    scale: float
    alpha: str | None = None


@dataclass
class Loaded:
    """What ComfyUI makes of one file: the patches, and the keys it would print as not loaded."""

    patches: list[Patch] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)


# --- Per-family: diffusers module name -> native weight -----------------------------------------

# FLUX.2 (Flux2Transformer2DModel <-> BFL's flux2 layout), in flux_keys' `Entry` form. No biases.
FLUX2_DOUBLE = (
    Entry(("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.qkv"),
    Entry(("attn.to_out.0",), "img_attn.proj"),
    Entry(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn.qkv"),
    Entry(("attn.to_add_out",), "txt_attn.proj"),
    Entry(("ff.linear_in",), "img_mlp.0"),
    Entry(("ff.linear_out",), "img_mlp.2"),
    Entry(("ff_context.linear_in",), "txt_mlp.0"),
    Entry(("ff_context.linear_out",), "txt_mlp.2"),
)
FLUX2_SINGLE = (
    Entry(("attn.to_qkv_mlp_proj",), "linear1"),
    Entry(("attn.to_out",), "linear2"),
)
FLUX2_GLOBAL = (
    Entry(("x_embedder",), "img_in"),
    Entry(("context_embedder",), "txt_in"),
    Entry(("time_guidance_embed.timestep_embedder.linear_1",), "time_in.in_layer"),
    Entry(("time_guidance_embed.timestep_embedder.linear_2",), "time_in.out_layer"),
    Entry(("time_guidance_embed.guidance_embedder.linear_1",), "guidance_in.in_layer"),
    Entry(("time_guidance_embed.guidance_embedder.linear_2",), "guidance_in.out_layer"),
    Entry(("double_stream_modulation_img.linear",), "double_stream_modulation_img.lin"),
    Entry(("double_stream_modulation_txt.linear",), "double_stream_modulation_txt.lin"),
    Entry(("single_stream_modulation.linear",), "single_stream_modulation.lin"),
    Entry(("norm_out.linear",), "final_layer.adaLN_modulation.1", swap_halves=True),
    Entry(("proj_out",), "final_layer.linear"),
)
FLUX2_BLOCKS = (("transformer_blocks", "double_blocks", FLUX2_DOUBLE),
                ("single_transformer_blocks", "single_blocks", FLUX2_SINGLE))

Widths = Mapping[str, int] | None


def _rows(members: tuple[str, ...], j: int, widths: Widths) -> tuple[int, int] | None:
    """Rows of member j in the fused output of `members` (full diffusers names); None if not fused."""
    if len(members) == 1:
        return None
    if widths is None or any(m not in widths for m in members[: j + 1]):
        raise ValueError(
            f"{members[j]!r} is one slice of a fused native weight: pass the model's modules with their output "
            "widths (flux_keys.module_out_features(transformer)) so its rows can be placed"
        )
    start = sum(widths[m] for m in members[:j])
    return start, start + widths[members[j]]


def _table_target(name: str, blocks, global_entries, widths: Widths) -> Target | None:
    """A FLUX-style table lookup: diffusers module `name` -> native weight (and rows of it)."""
    for d_blocks, b_blocks, entries in blocks:
        head = d_blocks + "."
        index, _, rest = name.removeprefix(head).partition(".")
        if name.startswith(head) and index.isdigit():
            return _entry_target(rest, entries, f"{d_blocks}.{index}.", f"{b_blocks}.{index}.", widths)
    return _entry_target(name, global_entries, "", "", widths)


def _entry_target(rest: str, entries: Iterable[Entry], d_prefix: str, b_prefix: str, widths: Widths) -> Target | None:
    for entry in entries:
        if rest in entry.members and dict(entry.params).get("weight") == "weight":  # Linears only, not norms
            members = tuple(d_prefix + m for m in entry.members)
            rows = _rows(members, entry.members.index(rest), widths)
            return Target(f"{b_prefix}{entry.bfl}.weight", rows, entry.swap_halves)
    return None


def _flux1_target(name: str, widths: Widths) -> Target | None:
    return _table_target(name, FLUX1_BLOCKS, FLUX1_GLOBAL, widths)


def _flux2_target(name: str, widths: Widths) -> Target | None:
    return _table_target(name, FLUX2_BLOCKS, FLUX2_GLOBAL, widths)


_Z_QKV = re.compile(r"^(.*\.attention)\.to_([qkv])$")


def _z_image_target(name: str, widths: Widths) -> Target | None:
    m = _Z_QKV.match(name)
    if m:
        head = m.group(1)
        members = tuple(f"{head}.to_{c}" for c in "qkv")
        return Target(f"{head}.qkv.weight", _rows(members, "qkv".index(m.group(2)), widths))
    native = re.sub(r"\.attention\.to_out\.0$", ".attention.out", name)
    native = re.sub(r"^all_x_embedder\.2-1$", "x_embedder", native)
    native = re.sub(r"^all_final_layer\.2-1\.", "final_layer.", native)
    return Target(f"{native}.weight")


def _same_name_target(name: str, widths: Widths) -> Target | None:
    return Target(f"{name}.weight")


# --- Per-family: how a file may spell a module ----------------------------------------------------


def _plain(prefix: str) -> Callable[[str], str]:
    return lambda name: prefix + name


def _underscored(prefix: str) -> Callable[[str], str]:
    return lambda name: prefix + name.replace(".", "_")


@dataclass(frozen=True)
class Rules:
    """One family's rules: `target` maps a diffusers module to its native weight; `native_forms` and
    `diffusers_forms` spell a native name / a diffusers name the ways a file may."""

    target: Callable[[str, Widths], Target | None]
    diffusers_forms: tuple[Callable[[str], str], ...]
    native_forms: tuple[Callable[[str], str], ...] = (_plain("diffusion_model."), _underscored("lora_unet_"))


_FLUX_DIFFUSERS_FORMS = (_plain("transformer."), _plain(""), _underscored("lora_transformer_"),
                         _underscored("lycoris_"))
_FLUX_NATIVE_FORMS = (_plain("diffusion_model."), _underscored("lora_unet_"), _plain(""))

RULES: dict[str, Rules] = {
    "flux1": Rules(_flux1_target, _FLUX_DIFFUSERS_FORMS, _FLUX_NATIVE_FORMS),
    "flux2-dev": Rules(_flux2_target, _FLUX_DIFFUSERS_FORMS, _FLUX_NATIVE_FORMS),
    "flux2-klein": Rules(_flux2_target, _FLUX_DIFFUSERS_FORMS, _FLUX_NATIVE_FORMS),
    "z-image": Rules(_z_image_target, (_plain("diffusion_model."), _plain("transformer."), _plain(""),
                                       _underscored("lycoris_"))),
    "qwen-image": Rules(_same_name_target, (_plain(""), _plain("transformer."), _plain("diffusion_model."),
                                            _underscored("lycoris_"))),
}


def rules_for(family: str) -> Rules:
    if family not in RULES:
        raise ValueError(f"no ComfyUI key rules for model family {family!r}; known: {', '.join(RULES)}")
    return RULES[family]


def key_map(family: str, modules: Mapping[str, int] | Iterable[str]) -> dict[str, Target]:
    """{file module name: Target} for every spelling the family's rules accept, built from the model's
    `modules`: its Linear layers by diffusers name (no `transformer.` prefix) with their output widths,
    i.e. `flux_keys.module_out_features(transformer)`. A plain set of names works where no q/k/v-style
    slice of a fused native weight must be placed; it should hold Linear layers only (ComfyUI maps
    weights, and for Z-Image / Qwen-Image any name is a weight name). Names no rule knows are skipped."""
    rules = rules_for(family)
    widths = modules if isinstance(modules, Mapping) else None
    out: dict[str, Target] = {}

    def put(key: str, target: Target) -> None:
        if out.setdefault(key, target) != target:
            raise ValueError(f"{family} rules map {key!r} to both {out[key]} and {target}")

    for name in modules:
        name = name.removesuffix(".base_layer")
        if ".lora_" in name:  # a PEFT wrapper's own parts
            continue
        target = rules.target(name, widths)
        if target is None:
            continue
        for form in rules.diffusers_forms:
            put(form(name), target)
        native = target.weight.removesuffix(".weight")
        whole = Target(target.weight)  # a native spelling always means the whole native weight
        for form in rules.native_forms:
            put(form(native), whole)
    return out


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return None


def match(lora: Mapping[str, torch.Tensor], family: str, modules: Mapping[str, int] | Iterable[str]) -> Loaded:
    """Apply the family's rules to a LoRA state dict (`safetensors.torch.load_file`): the patches, and
    the keys left over (ComfyUI's `lora key not loaded`), in file order."""
    kmap = key_map(family, modules)
    by_module: dict[str, dict[str, str]] = {}
    for key in lora:
        split = _split_key(key)
        if split:
            by_module.setdefault(split[0], {})[split[1]] = key
    loaded = Loaded()
    taken: set[str] = set()
    for module, parts in by_module.items():
        target = kmap.get(module)
        if target is None:
            continue
        for up_suffix, down_suffix in PAIRS:
            if up_suffix in parts and down_suffix in parts:
                up, down = parts[up_suffix], parts[down_suffix]
                alpha = parts.get(".alpha")
                rank = lora[down].shape[0]
                scale = float(lora[alpha]) / rank if alpha is not None else 1.0
                loaded.patches.append(Patch(module, up, down, target, scale, alpha))
                taken.update({up, down} | {parts[s] for s in EXTRAS if s in parts})
                break
    loaded.unloaded = [k for k in lora if k not in taken]
    return loaded


def match_file(path, family: str, modules: Mapping[str, int] | Iterable[str]) -> Loaded:
    """`match` on a .safetensors file."""
    from safetensors.torch import load_file

    return match(load_file(str(path)), family, modules)


def delta(patch: Patch, lora: Mapping[str, torch.Tensor], strength: float = 1.0) -> torch.Tensor:
    """The change `patch` makes to its target rows at `strength`: strength · scale · up @ down (fp32),
    rows in the native order."""
    if f"{patch.module}.lora_mid.weight" in lora:
        raise NotImplementedError(f"{patch.module}: LoRAs with a lora_mid (Tucker) factor are not modelled")
    up, down = lora[patch.up].float(), lora[patch.down].float()
    d = (up.flatten(1) @ down.flatten(1)) * (patch.scale * strength)
    if patch.target.swap_halves:
        first, second = d.chunk(2, dim=0)
        d = torch.cat([second, first])
    return d


def native_deltas(loaded: Loaded, lora: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]],
                  strength: float = 1.0) -> dict[str, torch.Tensor]:
    """{native weight: summed change} over every patch, at `strength`; `shapes` gives each native
    weight's shape (a whole-weight patch of another shape raises, as ComfyUI refuses it)."""
    out: dict[str, torch.Tensor] = {}
    for patch in loaded.patches:
        name = patch.target.weight
        if name not in shapes:
            raise KeyError(f"{patch.module} patches {name}, whose shape was not given")
        acc = out.setdefault(name, torch.zeros(shapes[name]))
        d = delta(patch, lora, strength)
        start, stop = patch.target.rows or (0, acc.shape[0])
        if tuple(d.shape) != (stop - start, *acc.shape[1:]):
            raise ValueError(f"{patch.module}: delta of shape {tuple(d.shape)} does not fit rows {start}:{stop} "
                             f"of {name} {tuple(acc.shape)}")
        acc[start:stop] += d.reshape(stop - start, *acc.shape[1:])
    return out
