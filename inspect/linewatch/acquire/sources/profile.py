"""Camera profiles: GenICam feature names and values, applied in order and verified by reading back.

A profile is a YAML file in `cameras/` (`features: [{name: Width, value: 256}, ...]`). A feature the
device lacks, a value it refuses or a value that does not read back is a ProfileError naming the
feature and the device, never a camera that silently runs with other settings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ProfileError(ValueError):
    """A profile cannot be read or applied; the text names the file or the feature and the device."""


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="GenICam feature name (SFNC).")
    value: bool | int | float | str | None = Field(None, description="Value to set; None executes a command.")


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = Field("", description="What this profile is for.")
    features: list[Feature] = Field(default_factory=list, max_length=500, description="Applied in this order.")


def load_profile(path: Path) -> Profile:
    from linewatch.paths import resolve

    path = resolve(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ProfileError(f"camera profile {path}: cannot read file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"camera profile {path}: not valid YAML: {exc}") from None
    try:
        return Profile.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"camera profile {path}: {where}: {first['msg']}") from None


def _same(read: Any, wanted: Any, step: float) -> bool:
    """Equal, or for a float feature within the device's increment (a camera rounds to its clock)."""
    if isinstance(wanted, bool) or isinstance(read, bool):
        return bool(read) == bool(wanted)
    if isinstance(wanted, float) or isinstance(read, float):
        return math.isclose(float(read), float(wanted), rel_tol=1e-3, abs_tol=max(1e-6, step))
    return bool(read == wanted)


def _increment(node: Any) -> float:
    from genicam import genapi

    try:
        return float(node.inc) if hasattr(node, "has_inc") and node.has_inc() else 0.0
    except (genapi.GenericException, TypeError, ValueError):
        return 0.0


def apply_profile(node_map: Any, profile: Profile, device: str) -> None:
    """Set each feature through the GenApi node map, in order, and read it back."""
    from genicam import genapi

    for f in profile.features:
        if not node_map.has_node(f.name):
            raise ProfileError(f"camera {device}: feature {f.name!r} does not exist on this device")
        node = node_map.get_node(f.name)
        try:
            if f.value is None:
                node.execute()
                continue
            node.value = f.value
            read = node.value
        except (genapi.GenericException, AttributeError, TypeError) as exc:
            raise ProfileError(f"camera {device}: feature {f.name!r} refused value {f.value!r}: "
                               f"{str(exc).split(' : ')[0]}") from None
        if not _same(read, f.value, _increment(node)):
            raise ProfileError(f"camera {device}: feature {f.name!r} was set to {f.value!r} but reads back {read!r}")
