"""Reading a config: YAML in, a validated LineConfig or a ConfigError naming path, value and line out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from linewatch.config.base import ConfigError
from linewatch.config.line import LineConfig

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown field",
    "missing": "required field missing",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must match {pattern}",
    "too_short": "needs at least {min_length} item(s)",
    "too_long": "allows at most {max_length} item(s)",
}


#: The members of a plain union (`int | "auto"`) pydantic names in an error's location: one error per member.
_UNION_MEMBER = re.compile(r"^(constrained-int|int|float|constrained-float|literal\[.*\])$")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("emulator", "genicam", "replay") or _UNION_MEMBER.match(part):  # union tags pydantic inserts
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_error(err: Any) -> str:
    return _format_errors([err])


def _format_errors(errs: list[Any]) -> str:
    """One problem: a value's errors (one per member when the field is a union such as `int | "auto"`)."""
    msgs = []
    for err in errs:
        ctx = err.get("ctx") or {}
        template = _MESSAGES.get(err["type"])
        msgs.append(template.format(**ctx) if template else str(err["msg"]).removeprefix("Value error, "))
    msg = " or ".join(dict.fromkeys(msgs))
    err = errs[0]
    if err["type"] != "missing" and "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return f"{_format_loc(tuple(err['loc']))}: {msg}"


def _yaml_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Line (1-based) in the YAML file of the value at `loc`, or of the deepest part of it that exists."""
    node = root
    if node is None:
        return None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                if isinstance(part, str) and part in ("emulator", "genicam", "replay"):
                    continue
                break
            node = match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


def parse_config(data: Any, source: str = "<config>", yaml_root: yaml.Node | None = None) -> LineConfig:
    """Validate a mapping into a LineConfig, raising ConfigError listing every problem (with its YAML line)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): must be a mapping, got {type(data).__name__}"])
    try:
        return LineConfig.model_validate(data)
    except ValidationError as exc:
        by_value: dict[str, list[Any]] = {}
        for e in exc.errors():
            by_value.setdefault(_format_loc(tuple(e["loc"])), []).append(e)
        problems = []
        for errs in by_value.values():
            line = _yaml_line(yaml_root, tuple(p for p in errs[0]["loc"]
                                               if not (isinstance(p, str) and _UNION_MEMBER.match(p))))
            problems.append(_format_errors(errs) + (f" [line {line}]" if line else ""))
        raise ConfigError(source, problems) from None


def load_config(path: Path | str | None) -> LineConfig:
    """The embedded default when path is None, else the validated YAML file."""
    if path is None:
        return LineConfig.model_validate({})
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_config(data, str(path), root)


def to_json(cfg: LineConfig) -> str:
    return cfg.model_dump_json()


def from_json(text: str) -> LineConfig:
    return LineConfig.model_validate_json(text)
