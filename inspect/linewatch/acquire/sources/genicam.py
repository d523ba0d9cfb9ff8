"""GenICam cameras through harvesters and the vendor's GenTL producer (.cti).

One acquirer per connection (harvesters leaks on create/destroy churn). Pixels are copied out of
the GenTL buffer inside the fetch context by the pixel-format conversion, straight into a frame
ring slot when acquire offers one: the only copy on the way to the worker. harvesters has no
disconnect event: a camera is lost when a fetch fails with a GenTL error, when a free-running
camera sends nothing for `loss_timeout_s`, or when a triggered camera no longer answers a feature
read; `reconnect` finds it again, re-applies its profile and restarts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from harvesters.core import Callback

from linewatch.acquire.sources import CameraLost, FrameBuffers, Grabbed, SourceError
from linewatch.acquire.sources.profile import Profile, ProfileError, apply_profile, load_profile
from linewatch.config import CameraConfig, GenicamSource
from linewatch.pixels import PixelFormatError, buffer_view, line_shape, to_line_format

log = logging.getLogger("genicam")
ACCESS_STATUS = {0: "unknown", 1: "available", 2: "read-only", 3: "no access", 4: "busy",
                 5: "open (read/write)", 6: "open (read-only)"}


def find_producers(configured: list[Path]) -> list[Path]:
    """The configured .cti files, else every .cti in the folders of GENICAM_GENTL64_PATH."""
    if configured:
        missing = [str(p) for p in configured if not Path(p).is_file()]
        if missing:
            raise SourceError(f"GenTL producer file(s) not found: {', '.join(missing)}")
        return [Path(p) for p in configured]
    found: list[Path] = []
    for folder in filter(None, os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep)):
        p = Path(folder)
        found += [p] if p.is_file() and p.suffix == ".cti" else sorted(p.glob("*.cti")) if p.is_dir() else []
    if not found:
        raise SourceError("no GenTL producer: set cameras[].source.producers or GENICAM_GENTL64_PATH")
    return found


def open_harvester(producers: list[Path]) -> Any:
    from harvesters.core import Harvester

    h = Harvester()
    for cti in producers:
        h.add_file(str(cti), check_existence=True, check_validity=True)
    h.update()
    return h


def _info(info: Any, name: str) -> Any:
    """A device-info field, None where the producer does not report it (GenTL NotAvailable)."""
    from genicam.gentl import GenericException

    try:
        return getattr(info, name)
    except GenericException:
        return None


def describe(info: Any) -> dict[str, Any]:
    """What `cameras list` shows of one device."""
    status = _info(info, "access_status")
    fields = {k: _info(info, a) or "" for k, a in (("id", "id_"), ("vendor", "vendor"), ("model", "model"),
                                                  ("serial", "serial_number"), ("user_name", "user_defined_name"),
                                                  ("tl_type", "tl_type"))}
    return {**fields, "access": ACCESS_STATUS.get(status, str(status))}


def select_device(h: Any, wanted: str) -> int:
    """Index of the device whose serial number, user-defined name or id is `wanted` (empty: the first)."""
    infos = h.device_info_list
    for i, info in enumerate(infos):
        if not wanted or wanted in (_info(info, "serial_number"), _info(info, "user_defined_name"), _info(info, "id_")):
            return i
    offered = ", ".join(f"{_info(d, 'id_')} (serial {_info(d, 'serial_number')})" for d in infos) or "none"
    raise CameraLost(f"no GenICam device {wanted!r} (devices offered: {offered})")


class GenicamCamera:
    """A GenTL device as a FrameSource; see the module docstring for loss detection."""

    def __init__(self, cam: CameraConfig, into: FrameBuffers | None = None):
        assert isinstance(cam.source, GenicamSource)
        self.cam, self.src, self.into = cam, cam.source, into
        self.paced_by_device = True
        try:
            self.profile = load_profile(self.src.profile) if self.src.profile else Profile()
        except ProfileError as exc:
            raise SourceError(str(exc)) from None
        self._h = open_harvester(find_producers(self.src.producers))
        self._ia: Any = None
        self._incomplete = 0
        self._last_frame = time.monotonic()
        try:
            self._connect()
        except SourceError:
            self._h.reset()
            raise

    @property
    def device_name(self) -> str:
        return f"{self.cam.name} ({self.src.device or 'first device'})"

    def _connect(self) -> None:
        index = select_device(self._h, self.src.device)
        status = _info(self._h.device_info_list[index], "access_status")
        if status not in (0, 1):
            raise CameraLost(f"camera {self.device_name} is {ACCESS_STATUS.get(status, status)}")
        from genicam.gentl import GenericException

        try:
            ia = self._h.create(index)
        except (ValueError, GenericException) as exc:
            raise CameraLost(f"camera {self.device_name} cannot be opened: {exc}") from None
        self._ia = ia
        try:
            apply_profile(ia.remote_device.node_map, self.profile, self.device_name)
            self._set_trigger(ia.remote_device.node_map)
            stream = ia.data_streams[0].node_map
            if stream.has_node("StreamBufferHandlingMode"):
                stream.StreamBufferHandlingMode.value = self.src.buffer_handling
            ia.num_buffers = max(self.src.num_buffers, ia.min_num_buffers)
            ia.add_callback(ia.Events.INCOMPLETE_BUFFER, _IncompleteCounter(self))
            ia.start()
        except ProfileError as exc:
            self._destroy()
            raise SourceError(str(exc)) from None
        except SourceError:
            self._destroy()
            raise
        self._last_frame = time.monotonic()
        log.info("camera %s connected (%s)", self.device_name, self.src.buffer_handling)

    def _set_trigger(self, nm: Any) -> None:
        if self.cam.trigger == "free_run":
            if nm.has_node("TriggerMode"):
                nm.TriggerMode.value = "Off"
            self._set_frame_rate(nm)
            return
        if not nm.has_node("TriggerMode"):
            raise SourceError(f"camera {self.device_name} has no TriggerMode feature: "
                              f"{self.cam.trigger} trigger is not available")
        nm.TriggerMode.value = "On"
        if self.cam.trigger == "software":
            nm.TriggerSource.value = "Software"
        # hardware: TriggerSource/Activation (Line1, encoder) come from the profile.

    def _set_frame_rate(self, nm: Any) -> None:
        """Free-run at the camera's `fps`, unless the profile sets the rate itself."""
        if any(f.name == "AcquisitionFrameRate" for f in self.profile.features):
            return
        if not nm.has_node("AcquisitionFrameRate"):
            raise SourceError(f"camera {self.device_name} has no AcquisitionFrameRate feature: set the rate "
                              "in its profile or use a trigger")
        rate = Profile.model_validate({"features": [
            *([{"name": "AcquisitionFrameRateEnable", "value": True}] if nm.has_node("AcquisitionFrameRateEnable")
              else []),
            {"name": "AcquisitionFrameRate", "value": float(self.cam.fps)}]})
        try:
            apply_profile(nm, rate, self.device_name)
        except ProfileError as exc:
            raise SourceError(f"{exc} (cameras[].fps)") from None

    def grab(self, timeout_s: float) -> Grabbed | None:
        from genicam.gentl import GenericException, TimeoutException

        if self._ia is None:
            raise CameraLost(f"camera {self.device_name} is not connected")
        try:
            with self._ia.fetch(timeout=timeout_s) as buf:
                comp = buf.payload.components[0]
                view = buffer_view(comp.data, comp.data_format, comp.width, comp.height, comp.x_padding)
                out = self.into(line_shape(self.cam.pixel_format, comp.width, comp.height)) if self.into else None
                pixels = to_line_format(view, comp.data_format, self.cam.pixel_format, out)  # the one copy
                frame_id, stamp = int(buf.frame_id), _timestamp_ns(buf)
        except TimeoutException:
            return self._no_frame()
        except GenericException as exc:
            raise CameraLost(f"camera {self.device_name}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        except PixelFormatError as exc:
            raise SourceError(f"camera {self.device_name}: {exc}") from None
        self._last_frame = time.monotonic()
        skipped, self._incomplete = self._incomplete, 0
        return Grabbed(pixels, self.cam.pixel_format, None, frame_id, stamp, skipped)

    def _no_frame(self) -> Grabbed | None:
        idle = time.monotonic() - self._last_frame
        if self.cam.trigger == "free_run" and idle >= self.src.loss_timeout_s:
            raise CameraLost(f"camera {self.device_name}: no frame for {idle:.1f} s while free-running")
        if self.cam.trigger != "free_run" and idle >= self.src.loss_timeout_s:
            self._probe()
            self._last_frame = time.monotonic()
        return None

    def _probe(self) -> None:
        """A triggered camera may be idle for long: read a feature to know it is still there."""
        from genicam.genapi import GenericException as GenApiError
        from genicam.gentl import GenericException

        try:
            _ = self._ia.remote_device.node_map.PayloadSize.value
        except (GenericException, GenApiError, AttributeError) as exc:
            raise CameraLost(f"camera {self.device_name} does not answer: {exc}") from None

    def trigger(self) -> None:
        from genicam.genapi import GenericException as GenApiError
        from genicam.gentl import GenericException

        if self.cam.trigger != "software":
            raise SourceError(f"camera {self.cam.name} is in {self.cam.trigger} mode, not software trigger")
        try:
            self._ia.remote_device.node_map.TriggerSoftware.execute()
        except (GenericException, GenApiError, AttributeError) as exc:
            raise CameraLost(f"camera {self.device_name}: software trigger failed: {exc}") from None

    def reconnect(self) -> None:
        self._destroy()
        self._h.update()  # only safe with no acquirer open: it resets the device list
        self._connect()

    def _destroy(self) -> None:
        from genicam.gentl import GenericException

        ia, self._ia = self._ia, None
        if ia is None:
            return
        for step in (ia.stop, ia.destroy):
            try:
                step()
            except (GenericException, AttributeError) as exc:  # the device is already gone
                log.info("camera %s: %s during cleanup: %s", self.device_name, step.__name__, exc)

    def close(self) -> None:
        self._destroy()
        self._h.reset()


class _IncompleteCounter(Callback):  # type: ignore[misc]
    """harvesters re-queues an incomplete buffer and only emits this event: count it, acquire records it."""

    def __init__(self, camera: GenicamCamera):
        self.camera = camera

    def emit(self, context: object = None) -> None:
        self.camera._incomplete += 1


def _timestamp_ns(buf: Any) -> int | None:
    from genicam.gentl import GenericException

    try:
        return int(buf.timestamp_ns) or None
    except GenericException:
        pass
    try:
        ticks, freq = int(buf.timestamp), int(buf.timestamp_frequency)
    except (GenericException, AttributeError):  # harvesters raises AttributeError for an absent node
        return None
    return ticks * 1_000_000_000 // freq if ticks and freq else None
