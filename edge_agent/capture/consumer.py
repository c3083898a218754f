"""What capture hands its packets to: the one small contract every consumer keeps.

picamera2's encoders hand each encoded frame to `Output.outputframe`, the one interface all its outputs
share, so an encoder does not know whether it writes a file, a socket or a circular buffer. Capture does
the same: the ring (every packet, for clips) and the decode stage (the packets detection needs) are
`PacketConsumer`s, and the capture thread knows nothing else of them.

`offer` is called on the capture thread for every packet, so it must never wait on anything slow when
the source is a camera (the consumer drops and counts instead; `stage.Backpressure`). `end` says no more
input will come. `status` is the consumer's typed status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.capture.media import CameraPicture, Packet


class PacketConsumer(Protocol):
    def offer(self, pkt: Packet) -> None:
        """One packet, in decode order, on the capture thread."""

    def end(self) -> None:
        """No more input: finish what is held."""

    def status(self) -> Any:
        """A typed status, readable from any thread."""


class PictureConsumer(Protocol):
    def offer_picture(self, picture: CameraPicture) -> None:
        """A camera's own picture of a frame (picamera2's lores stream), on the capture thread: still in the
        camera's buffer, `take()` it (copy it out) before returning if it is wanted."""


@dataclass(frozen=True)
class Route:
    """Where one session's output goes, decided when it opens: packets to each of `packets` in turn, the
    camera's pictures (if the source gives any) to `pictures`. `ended`, if given, is called on the capture
    thread when the session ends other than by a stop (a camera that stalled, failed or ended and may stay
    away): what is held for it can be finished now rather than when the next session starts."""

    packets: Sequence[PacketConsumer]
    pictures: PictureConsumer | None = None
    ended: Callable[[], None] | None = None
