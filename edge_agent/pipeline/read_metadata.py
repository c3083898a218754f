"""A read's metadata (`delivery.contract.Metadata`), built one way for both moments it is written: when the
read is made (the detect stage commits it with no clip yet) and when its clip is made (the clip stage)."""

from __future__ import annotations

from typing import Any

from edge_agent import __version__, clock_sync
from edge_agent.delivery import contract
from edge_agent.pipeline.qr_detector import Detection


def read_metadata(device_id: str, event_id: str, cid: str, first: Detection, hits: int, last_t: float,
                  clip: contract.ClipInfo, track: list[contract.TrackedCode] | None = None,
                  quality: contract.Quality | None = None,
                  track_frames: contract.TrackFrames | None = None) -> dict[str, Any]:
    """The metadata as sent: `first` is the read's first sighting, `last_t` the capture time of its last.
    Wall times are computed now from the capture's monotonic time (capture.clock.wall_at), with the clock's
    state now beside them."""
    wall = first.wall
    return contract.Metadata(
        event_id=event_id, device_id=device_id, cid=cid, detected_at=contract.rfc3339(wall), clip=clip,
        detection=contract.DetectionInfo(
            decoder=first.decoder, polygon=list(first.polygon), frame_width=first.frame_width,
            frame_height=first.frame_height, hits=hits, last_detected_at=contract.rfc3339(wall + (last_t - first.t)),
            track=track, track_frames=track_frames, quality=quality),
        agent=contract.AgentInfo(version=__version__),
        clock=contract.ClockInfo.model_validate(clock_sync.read(), from_attributes=True),
    ).model_dump(mode="json", exclude_none=True)
