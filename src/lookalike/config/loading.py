"""Reading, layering and writing the run config; turning validation errors into plain sentences.

Values are layered, lowest first: the schema's defaults (the FLUX.1-dev recipe), a preset file from
`presets/`, the user's YAML file, then `section.key=value` overrides. Unknown keys and bad values
raise `ConfigError` naming the key, the value seen and the fix, before any model is loaded.
"""

import contextlib
import copy
import difflib
import os
import re
import tempfile
import types
from collections.abc import Hashable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from lookalike.errors import ConfigError

from lookalike.config.schema import _OUR_ERROR, DEFAULT_PRESET, Config

PRESETS_DIR = Path(str(resources.files("lookalike").joinpath("presets")))

# ---------------------------------------------------------------- schema introspection


def _bare(tp: Any) -> Any:
    """`tp` without `Annotated[...]` and without `| None`."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]
        else:
            return tp


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _type_at(loc: Sequence[str | int]) -> Any:
    """The bare type at a pydantic location such as ('generate', 'loras', 0); None if off-schema."""
    tp: Any = Config
    for part in loc:
        if isinstance(part, int) and get_origin(tp) is list:
            tp = _bare(get_args(tp)[0])
        elif isinstance(part, str) and _is_section(tp) and part in tp.model_fields:
            tp = _bare(tp.model_fields[part].annotation)
        else:
            return None
    return tp


def _type_text(tp: Any) -> str:
    """A type as a reader wants it in a table: `int`, `list[str]`, `auto | bf16`, `str | None`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _type_text(args[0])
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _walk_fields(cls: type[BaseModel], prefix: str, values: BaseModel | None) -> Iterator[tuple[str, str, Any, str]]:
    for name, field in cls.model_fields.items():
        key, tp = prefix + name, _bare(field.annotation)
        if _is_section(tp):
            yield from _walk_fields(tp, key + ".", getattr(values, name) if values is not None else None)
            continue
        if values is not None:
            default = getattr(values, name)
        else:
            default = ... if field.is_required() else field.get_default(call_default_factory=True)
        yield key, _type_text(field.annotation), default, field.description or ""
        if get_origin(tp) is list and _is_section(_bare(get_args(tp)[0])):
            yield from _walk_fields(_bare(get_args(tp)[0]), key + "[].", None)


def iter_fields(cfg_cls: type[BaseModel] = Config, values: BaseModel | None = None) -> Iterator[tuple[str, str, Any, str]]:
    """Yield (dotted key, type as text, default, help) for every setting, in schema order.

    With `values` (a Config, e.g. a preset's), the third item is its value instead of the schema default.
    Items of a list of sections appear as `generate.loras[].path`; a required field's default is `...`.
    """
    yield from _walk_fields(cfg_cls, "", values)


# ---------------------------------------------------------------- error messages


def _dotted(loc: Sequence[str | int]) -> str:
    """('generate', 'loras', 0, 'weight') -> 'generate.loras[0].weight'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, shortened."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _guesses(key: str, parent: tuple, valid: list[str]) -> list[str]:
    """Dotted keys the user probably meant; at the top level also `rank` or `lora_rnak` -> `lora.rank`."""
    aliases = {name: [_dotted((*parent, name))] for name in valid}
    for dotted, *_ in iter_fields() if not parent else ():
        if "." in dotted and "[" not in dotted:
            aliases.setdefault(dotted.replace(".", "_"), []).append(dotted)
            aliases.setdefault(dotted.split(".")[-1], []).append(dotted)
    close = difflib.get_close_matches(key, list(aliases), n=1)
    return aliases[close[0]] if close else []


def _unknown_key(parent: tuple, key: str) -> str:
    """`unknown key 'lora.rnak'; did you mean 'lora.rank'? Valid keys in 'lora': rank, alpha, targets`."""
    valid = list(_type_at(parent).model_fields)
    guesses = _guesses(key, parent, valid)
    hint = f"; did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else "."
    where = f"in '{_dotted(parent)}'" if parent else "at the top level"
    return f"unknown key '{_dotted((*parent, key))}'{hint} Valid keys {where}: {', '.join(valid)}"


_PROBLEMS = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
}
_BOUNDS = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "finite_number": "must be a finite number",
}


def _default_hint(loc: tuple) -> str:
    """' (default: 32)' for the field at `loc`, or '' for list items and required fields."""
    parent = _type_at(loc[:-1])
    if not (_is_section(parent) and loc[-1] in parent.model_fields):
        return ""
    field = parent.model_fields[loc[-1]]
    return "" if field.is_required() else f" (default: {_show(field.get_default(call_default_factory=True))})"


def _problem(error: dict, loc: tuple) -> str:
    """What is wrong with a value and, where a default exists, what to go back to."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == _OUR_ERROR:
        return error["msg"]
    if kind in _BOUNDS:
        return _BOUNDS[kind].format(**ctx) + _default_hint(loc)
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        tp = _type_at(loc)
        keys = f" with keys {', '.join(tp.model_fields)}" if _is_section(tp) else ""
        return f"expected a mapping{keys}"
    return _PROBLEMS.get(kind, error["msg"])


def _has_path(data: Any, loc: tuple) -> bool:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False
    return True


def _origin(loc: tuple, layers: list[tuple[str, dict]]) -> str:
    """Label of the last layer (file, preset, override) that set the deepest part of `loc`."""
    for depth in range(len(loc), 0, -1):
        for label, data in reversed(layers):
            if _has_path(data, loc[:depth]):
                return label
    return "config"


def _describe(error: dict, layers: list[tuple[str, dict]]) -> str:
    """One pydantic error as one line for the user."""
    loc = tuple(error["loc"])
    where = _origin(loc, layers)
    if error["type"] in ("extra_forbidden", "invalid_key"):
        return f"{where}: {_unknown_key(loc[:-1], str(loc[-1]))}"
    if error["type"] == "missing":
        return f"{where}: missing required key '{_dotted(loc)}'"
    return f"{where}: {_dotted(loc)} = {_show(error['input'])}: {_problem(error, loc)}"


def _validate(merged: dict, layers: list[tuple[str, dict]]) -> Config:
    """Build the Config, turning every pydantic error into one line of one ConfigError."""
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        lines = [_describe(e, layers) for e in err.errors(include_url=False)]
    if len(lines) == 1:
        raise ConfigError(lines[0])
    raise ConfigError(f"{len(lines)} problems in the run config:\n" + "\n".join(f"  {line}" for line in lines))


# ---------------------------------------------------------------- YAML


_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """safe_load, plus: `1e-4` is a float (YAML 1.1 says string) and duplicate keys are errors."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` keys may be overridden; that is their point
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    """safe_dump that quotes strings `_Loader` would read as floats, so output loads back equal."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Strings with line breaks as one double-quoted line (`"a\\nb"`), so comments can follow."""
    style = '"' if "\n" in value or "\r" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
_Dumper.add_representer(str, _represent_str)


def _yaml_syntax_error(label: str, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(err, "problem", None) or str(err)
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start and mark and start.line != mark.line:
        problem += f" ({context} at line {start.line + 1})"
    return f"{label}: not valid YAML{where}: {problem}"


def _read_yaml(path: Path, label: str) -> dict:
    """A YAML file's top-level mapping; an empty file is {} and so is an empty section (`lora:`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_syntax_error(label, err)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{label}: the top level must be a mapping of sections (lora:, train:, ...), not a {kind}")
    sections = {k for k, f in Config.model_fields.items() if _is_section(_bare(f.annotation))}
    return {k: {} if v is None and k in sections else v for k, v in data.items()}


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _inline(value: Any) -> str:
    """One value as single-line YAML: `32`, `[to_q, to_k]`, `'lookalike:tiny-twin'`, `null`."""
    # Dumped as a one-item flow list so that the emitter never picks a multi-line style.
    flow = {"default_flow_style": True, "allow_unicode": True, "width": 1 << 30}
    text = yaml.dump([value], Dumper=_Dumper, sort_keys=False, **flow)
    return text.strip()[1:-1]


def _commented(cls: type[BaseModel], data: dict, indent: str) -> list[str]:
    """YAML lines for one section, each setting with its help as a trailing comment."""
    lines: list[str] = []
    for name, field in cls.model_fields.items():
        tp = _bare(field.annotation)
        if _is_section(tp):
            lines += ["", f"{indent}# {(tp.__doc__ or '').strip().splitlines()[0]}", f"{indent}{name}:"]
            lines += _commented(tp, data[name], indent + "  ")
        else:
            setting = f"{indent}{name}: {_inline(data[name])}"
            lines.append(f"{setting:<38}  # {field.description}")
    return lines


def config_to_yaml(cfg: Config, comments: bool = True) -> str:
    """The config as YAML that `load_config` reads back to an equal Config.

    With `comments`, each setting carries its help text as a comment.
    """
    data = cfg.model_dump(mode="python")
    if not comments:
        return _dump(data)
    head = ["# lookalike run config. Every key is optional; `lookalike config` lists them all."]
    return "\n".join(head + _commented(type(cfg), data, "")) + "\n"


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the commented YAML atomically: a temp file beside `path`, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(config_to_yaml(cfg))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------- loading


def preset_names() -> list[str]:
    """Names of the preset files shipped in the package, e.g. ['flux1-dev', 'tiny']."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _override_target(parts: list[str], label: str) -> Any:
    """The bare type of the setting at `parts`, or a ConfigError if the dotted key is not in the schema."""
    tp: Any = Config
    for i, part in enumerate(parts):
        if not _is_section(tp):
            raise ConfigError(f"{label}: '{'.'.join(parts[:i])}' is a setting, not a section")
        if part not in tp.model_fields:
            raise ConfigError(f"{label}: {_unknown_key(tuple(parts[:i]), part)}")
        tp = _bare(tp.model_fields[part].annotation)
    return tp


def _parse_override(text: str) -> dict:
    """'lora.rank=16' -> {'lora': {'rank': 16}}, the value read as YAML and the key checked."""
    key, sep, raw = text.partition("=")
    parts, label = key.strip().split("."), f"override {text!r}"
    if not sep or not all(parts):
        example = "e.g. lora.rank=16 or generate.seeds=[1,2]"
        raise ConfigError(f"{label} is not of the form section.key=value, {example}")
    target = _override_target(parts, label)
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_syntax_error(label, err)) from None
    if target is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = raw.strip()  # keep `dataset.trigger=1e5` or `model.revision=0123` as typed
    for part in reversed(parts):
        value = {part: value}
    return value


def _choose_preset(preset: str | None, layers: list[tuple[str, dict]]) -> str:
    """The preset argument, else the last `preset:` in the file or overrides, else flux1-dev."""
    where = ""
    if preset is None:
        for label, data in reversed(layers):
            if "preset" in data:
                where, preset = f"{label}: ", data["preset"]
                break
    if preset is None:
        return DEFAULT_PRESET
    names = preset_names()
    if not isinstance(preset, str) or preset not in names:
        close = difflib.get_close_matches(str(preset), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        raise ConfigError(f"{where}unknown preset {_show(preset)}{hint} Valid presets: {', '.join(names)}")
    return preset


def _deep_merge(base: dict, top: dict) -> dict:
    """`top` over `base`: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path | None = None, preset: str | None = None, overrides: Sequence[str] = (),
                base: tuple[str, dict] | None = None) -> Config:
    """Defaults, then the preset, then `base` (a (label, settings) layer, e.g. a run's own settings), then
    the YAML file at `path`, then `section.key=value` overrides.

    The preset is `preset` if given, else a top-level `preset:` key (file or override), else flux1-dev.
    Raises ConfigError naming the file, dotted key, value seen and fix for every problem found.
    """
    overrides = [overrides] if isinstance(overrides, str) else overrides  # one override, not its characters
    user = [base] if base else []
    user += [(str(path), _read_yaml(Path(path), str(path)))] if path is not None else []
    user += [(f"override {o!r}", _parse_override(o)) for o in overrides]
    name = _choose_preset(preset, user)
    layers = [(f"preset '{name}'", _read_yaml(PRESETS_DIR / f"{name}.yaml", f"preset '{name}'")), *user]
    merged: dict = {}
    for _, data in layers:
        merged = _deep_merge(merged, data)
    merged["preset"] = name
    return _validate(merged, layers)


def own_settings(cfg: Config) -> dict:
    """The settings of `cfg` that differ from its preset's, nested like the YAML ({'lora': {'rank': 8}}):
    what the user chose, to carry over when a run switches preset."""
    ours, theirs = flat_settings(cfg), flat_settings(load_config(preset=cfg.preset))
    nested: dict = {}
    for key, value in ours.items():
        if key != "preset" and theirs.get(key) != value:
            *parents, leaf = key.split(".")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return nested


def flat_settings(cfg, sections=None) -> dict:
    """{'lora.rank': 32, ...} for every setting under `sections` (default: all)."""
    flat: dict = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", cfg.model_dump(mode="json"))
    if sections is None:
        return flat
    return {k: v for k, v in flat.items() if any(k == s or k.startswith(s + ".") for s in sections)}
