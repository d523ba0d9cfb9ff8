"""What every config module shares: the error type and the strict base model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


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


def _unique(names: list[str], what: str) -> None:
    """Refuse repeated names (cameras, hooks): each names one thing in records, metrics and the API."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} must be unique, repeated: {', '.join(dupes)}")


def _backoff(first: float, longest: float, where: str) -> None:
    """A retry backoff's first wait must not exceed its longest (`where`: the fields' prefix)."""
    if first > longest:
        raise ValueError(f"{where}: the first wait ({first:g} s) must not exceed the longest ({longest:g} s)")
