"""Cameras and the sources their frames come from (emulator, GenICam, replay)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from linewatch.config.base import _Strict

MAX_CAMERAS = 64  # a line's cameras: the PLC register map has a camera block and a trigger coil for each


class EmulatorSource(_Strict):
    """Synthetic parts rendered on the fly (no hardware needed)."""

    type: Literal["emulator"] = "emulator"
    seed: int = Field(0, ge=0, description="Seed: the same seed renders the same parts.")
    defect_rate: float = Field(0.2, ge=0.0, le=1.0, description="Share of parts that carry a defect.")
    scene: Path | None = Field(
        None, description="Scene file (cameras/*.yaml): products, defects, camera effects, scenarios. "
        "None renders the default machined round part the reference model was trained on."
    )


class GenicamSource(_Strict):
    """A GenICam camera reached through its vendor's GenTL producer (harvesters)."""

    type: Literal["genicam"] = "genicam"
    producers: list[Path] = Field(
        default_factory=list, max_length=16,
        description="GenTL producer files (.cti); empty: those on GENICAM_GENTL64_PATH.",
    )
    device: str = Field("", max_length=128, description="Serial number, user-defined name or id; empty = first.")
    profile: Path | None = Field(None, description="Camera profile (cameras/*.yaml): features applied in order.")
    buffer_handling: Literal["OldestFirst", "NewestOnly"] = Field(
        "OldestFirst", description="Stream buffer mode: OldestFirst for inspection, NewestOnly for live view."
    )
    num_buffers: int = Field(8, ge=2, le=256, description="Buffers announced to the stream.")
    loss_timeout_s: float = Field(
        1.0, gt=0, le=2.0, description="No frame for this long while free-running means the camera is lost."
    )
    reconnect_backoff_s: tuple[float, float] = Field((0.2, 10.0), description="First and longest reconnect delay.")

    @field_validator("reconnect_backoff_s")
    @classmethod
    def _backoff_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        first, longest = v
        if not 0 < first <= longest <= 300:
            raise ValueError(f"must satisfy 0 < first <= longest <= 300, got [{first}, {longest}]")
        return v


class ReplaySource(_Strict):
    """Frames from a folder of images or a video file, with labels from a manifest when present."""

    type: Literal["replay"] = "replay"
    path: Path = Field(Path("dataset"), description="Folder of PNG/JPEG/TIFF/BMP images, or a video file.")
    loop: bool = Field(False, description="Start again at the end (otherwise the source ends).")
    manifest: Path | None = Field(None, description="Manifest with truth per file (default: path/manifest.jsonl).")


SourceConfig = Annotated[EmulatorSource | GenicamSource | ReplaySource, Field(discriminator="type")]


class CameraConfig(_Strict):
    name: str = Field("cam0", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Camera id used in every record.")
    source: SourceConfig = Field(default_factory=EmulatorSource, description="Where frames come from.")
    width: int = Field(256, gt=0, le=16384, description="Frame width in pixels.")
    height: int = Field(256, gt=0, le=16384, description="Frame height in pixels.")
    fps: float = Field(20.0, gt=0, le=2000, description="Frame (part) rate.")
    exposure_us: float = Field(5000.0, gt=0, le=1_000_000, description="Exposure time in microseconds.")
    max_frames: int = Field(0, ge=0, description="Stop acquiring after this many frames (0 = never).")
    trigger: Literal["free_run", "software", "hardware"] = Field(
        "free_run", description="free_run at `fps`; software: a frame per trigger (REST, HMI, PLC); "
        "hardware: the camera's line/encoder input (set up by the profile, or the emulator's encoder)."
    )
    pixel_format: Literal["Mono8", "RGB8", "BGR8"] = Field(
        "Mono8", description="Layout the camera's frames are converted to before they are sent (the model's)."
    )
