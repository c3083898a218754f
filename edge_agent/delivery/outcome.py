"""What one upload attempt came to: the uploader's answer to its caller and to its listener.

A `StrEnum`, so the value is also the `result` label of edge_agent_uploads_total and the word in
`spool flush`'s summary.
"""

from __future__ import annotations

from edge_agent.str_enum import StrEnum


class UploadResult(StrEnum):
    DELIVERED = "delivered"  # 2xx
    DUPLICATE = "duplicate"  # 409: the server has it already, so delivered too
    RETRY = "retry"  # the clip stays queued and is tried again after its backoff
    QUARANTINED = "quarantined"  # refused for good: set aside in quarantine/
    STOPPED = "stopped"  # the caller cut the attempt short (a stop, a flush deadline): not counted

