"""The wire: every message that crosses a socket between the line's processes, and where the sockets are.

Each payload is a typed dataclass validated on receipt (msgspec, in C); a bad message raises
`MessageError` naming the field, never a KeyError deep inside a process. Submodules by channel:
`frames` (acquire -> infer, announcements), `verdicts` (infer -> record, record's events), `control`
(alarms, operators' actions and the lot rule, camera commands), `camera_client` (the one client of the
cameras' control sockets), `endpoints` (socket addresses and message kinds), `channels` (sockets with
their options), `frame_ring` (pixels in shared memory), `ready` (ready files).
"""

from linewatch.clock import now_ns
from linewatch.wire.codec import MAX_INT64, Count, MessageError, Positive
from linewatch.wire.control import (
    LOT_MAX_CHARS,
    Alarm,
    CameraCommand,
    CameraReply,
    LotError,
    OperatorAction,
    check_lot,
)
from linewatch.wire.endpoints import (
    KIND_ACTION,
    KIND_ALARM,
    KIND_ANNOUNCE,
    KIND_VERDICT,
    KIND_VERDICT_BATCH,
    KIND_VERDICTS,
    Endpoints,
)
from linewatch.wire.frames import (
    DTYPES,
    FRAME_VERSION,
    FRAME_VERSIONS,
    FrameHeader,
    PixelDtype,
    SlotRelease,
    decode_frame,
    encode_frame,
    peek_identity,
)
from linewatch.wire.verdicts import (
    MAX_DETECTIONS,
    Detection,
    Final,
    Verdict,
    VerdictError,
    decode_verdict_group,
    encode_verdict_batch,
    encode_verdict_group,
)

__all__ = [
    "DTYPES", "FRAME_VERSION", "FRAME_VERSIONS", "KIND_ACTION", "KIND_ALARM", "KIND_ANNOUNCE", "KIND_VERDICT",
    "KIND_VERDICTS", "KIND_VERDICT_BATCH", "LOT_MAX_CHARS", "MAX_DETECTIONS", "MAX_INT64", "Alarm", "CameraCommand",
    "CameraReply", "Count", "Detection", "Endpoints", "Final", "FrameHeader", "LotError", "MessageError",
    "OperatorAction", "PixelDtype", "Positive", "SlotRelease", "Verdict", "VerdictError", "check_lot",
    "decode_frame", "decode_verdict_group", "encode_frame", "encode_verdict_batch", "encode_verdict_group",
    "now_ns", "peek_identity",
]
