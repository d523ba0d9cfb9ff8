"""The one client of the cameras' control sockets: a command to a camera's acquire process and its reply.

The api and the plc ask from their event loops (`request_camera_async`), `linewatch cameras trigger` from
the shell (`request_camera`); both open the socket and read the reply the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from linewatch.wire.codec import MessageError
from linewatch.wire.control import CameraCommand, CameraReply
from linewatch.wire.endpoints import Endpoints

_Socket = TypeVar("_Socket", bound="zmq.Socket[Any]")


class CameraNoAnswer(TimeoutError):
    """acquire did not answer a camera command in time (the line is not running, or the camera is stuck)."""


def request_camera(endpoints: Endpoints, camera: str, command: CameraCommand, timeout_s: float) -> CameraReply:
    """Send `command` to `camera` and return its reply; raises CameraNoAnswer or MessageError, both naming
    the camera."""
    ctx: zmq.Context[zmq.Socket[Any]] = zmq.Context.instance()
    sock = _open(ctx, endpoints, camera)
    try:
        sock.send(command.to_bytes())
        if not sock.poll(int(timeout_s * 1000)):
            raise _no_answer(endpoints, camera, timeout_s)
        return _reply(camera, sock.recv())
    finally:
        sock.close()


async def request_camera_async(endpoints: Endpoints, camera: str, command: CameraCommand, timeout_s: float,
                               ctx: zmq.asyncio.Context | None = None) -> CameraReply:
    """`request_camera` for an event loop, on a link of its own; `ctx`: the caller's asyncio context (default: the
    shared one)."""
    link = CameraLink(endpoints, camera, ctx or zmq.asyncio.Context.instance())
    try:
        return await link.request(command, timeout_s)
    finally:
        link.close()


class CameraLink:
    """One camera's control socket kept open between requests, for a process that triggers it at a line's rate
    (the plc): a fresh socket per request adds its connection handshake to every trigger's way to the camera.
    Requests take turns. A request not sent or not answered within its timeout closes the
    socket (LINGER 0: the command is dropped with it, never delivered to a camera that comes back later) and
    the next request opens a new one."""

    def __init__(self, endpoints: Endpoints, camera: str, ctx: zmq.asyncio.Context):
        self.endpoints, self.camera, self.ctx = endpoints, camera, ctx
        self._sock: zmq.asyncio.Socket | None = None
        self._turn = asyncio.Lock()

    async def request(self, command: CameraCommand, timeout_s: float) -> CameraReply:
        async with self._turn:
            if self._sock is None:
                self._sock = _open(self.ctx, self.endpoints, self.camera)
            sock, answered = self._sock, False
            try:
                await asyncio.wait_for(sock.send(command.to_bytes()), timeout_s)
                if not await sock.poll(int(timeout_s * 1000)):
                    raise _no_answer(self.endpoints, self.camera, timeout_s)
                raw = await sock.recv()
                answered = True
            except TimeoutError:
                raise _no_answer(self.endpoints, self.camera, timeout_s) from None
            finally:
                if not answered:  # a REQ without its reply cannot send again
                    self.close()
            return _reply(self.camera, raw)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _open(ctx: zmq.Context[_Socket], endpoints: Endpoints, camera: str) -> _Socket:
    """A REQ per request: one whose reply never came cannot send again. LINGER 0: an unanswered command
    is dropped with its socket, never delivered to a camera that comes back later."""
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoints.control(camera))
    return sock


def _no_answer(endpoints: Endpoints, camera: str, timeout_s: float) -> CameraNoAnswer:
    return CameraNoAnswer(f"camera {camera!r}: acquire did not answer on {endpoints.control(camera)} within "
                          f"{timeout_s:g} s (is the line running?)")


def _reply(camera: str, raw: bytes) -> CameraReply:
    try:
        return CameraReply.from_bytes(raw)
    except MessageError as exc:
        raise MessageError(f"camera {camera!r}: {exc}") from None
