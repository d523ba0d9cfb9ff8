"""What every config module shares: paths, the error type and the strict base model."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: The repository root when running from a checkout (models/ and cameras/ live there).
REPO_ROOT = PACKAGE_ROOT.parent.parent
#: The registry's link to the model active for the default recipe (`linewatch models promote` moves it).
DEFAULT_MODEL = REPO_ROOT / "models" / "active" / "default.onnx"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every error with its path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered_pair(v: tuple[float, float], lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
    if not lo <= v[0] <= v[1] <= hi:
        raise ValueError(f"must satisfy {lo:g} <= low <= high <= {hi:g}, got [{v[0]}, {v[1]}]")
    return v
