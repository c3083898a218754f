"""Named defaults. Every magic number of the project lives here, with why it has its value."""

from __future__ import annotations

import os
from pathlib import Path

# A CID is an opaque id printed as a QR code; it must be safe in logs, JSON and form fields.
CID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
CID_MAX_LENGTH = 128
# Log at most this much of a rejected payload (escaped): enough to identify a bad label.
REJECTED_LOG_CHARS = 80

COOLDOWN_S = 5.0
# Frames of *video time* per second handed to the QR decoder. A label crossing a 1080p frame on a
# conveyor is in view for >= 1 s, so 10 Hz gives several chances while costing a third of 30 fps.
DETECT_RATE_HZ = 10.0
# Of each keyframe interval (steady keyframes, closed GOPs), how much video detection may leave
# undecoded (pipeline/keyframe_window.py): a label in view for >= 1 s is still analysed ~5 times at 10 Hz.
MAX_BLIND_S = 0.5
# Frames wider than this are downscaled before QR decoding. Measured on the 1080p sample: zxing-cpp
# takes ~2.6 ms on the full 1920 px frame and ~2.7 ms at 1280 px including the INTER_AREA resize
# (non-integer factors are slow), and small labels are safer at full resolution, so only frames
# wider than 1080p (4K cameras) are scaled by default.
DETECT_MAX_WIDTH_PX = 1920
# The detect stage runs zxing-cpp's invert and downscale passes (light-on-dark, blurred and oversized
# codes; 0.9 ms more a 1080p frame) on every second analysed frame: a label crossing the view is
# analysed ~10 times, so each pass still sees it ~5 times, and 1080p replay stays within 1.25x of
# decoding alone.
THOROUGH_EVERY = 3

# No-read images (codes located but not read): a few hundred crops of ~20-60 kB each.
NOREADS_MAX_FILES = 200
NOREADS_MAX_BYTES = 20 * 1024 * 1024

PRE_ROLL_S = 2.5
POST_ROLL_S = 2.5
CLIP_MAX_S = 30.0
# Hardware first: Pi 4 (V4L2 M2M), NVIDIA (NVENC), Intel/AMD (VA-API needs a device, so not listed).
ENCODERS = ("h264_v4l2m2m", "h264_nvenc", "libx264")
CRF = 23
# An encoder that failed is tried after the others for this long, doubling up to the cap: a full disk or
# a task limit clears in minutes, an absent device costs one failed open (ms) per cap.
ENCODER_RETRY_S = 30.0
ENCODER_RETRY_CAP_S = 1800.0
X264_PRESET = "veryfast"
# 64 MiB holds ~25 s of 1080p H.264 at 20 Mbit/s: far beyond pre-roll + post-roll + a GOP.
RING_MAX_BYTES = 64 << 20
# Keep pre-roll + post-roll + this much extra video so a clip can start on a keyframe one GOP back.
RING_MARGIN_S = 4.0

SOURCE_STALL_S = 10.0
SOURCE_OPEN_TIMEOUT_S = 10.0
REOPEN_BACKOFF_START_S = 1.0
REOPEN_BACKOFF_CAP_S = 60.0
# The capture thread's every wait is bounded (an open by 3 x source.open_timeout_s: FFmpeg's open, its
# probing and an untimed pipe's read-ahead; a read by source.stall_s or open_timeout_s; a reopen's back-off);
# past its bound by this much more (a loaded Pi, a camera command slow to die) it is stuck, and the daemon
# stops telling systemd's watchdog it is alive.
CAPTURE_SLACK_S = 10.0
# At a stop, capture gets this long to end before its consumers are ended without it: a pipe read ends at
# once, a read blocked in FFmpeg's network code only at its timeout (PyAV has no interrupt-now).
CAPTURE_STOP_GRACE_S = 1.0
# A camera command is given this long to exit after SIGTERM (rpicam-vid releases the camera), then killed.
COMMAND_STOP_S = 2.0

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
# A factory uplink on a bad day: 50 kB/s. The read timeout grows by size / this rate.
MIN_UPLOAD_RATE = 50_000
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0

SPOOL_MAX_BYTES = 2 << 30
SPOOL_MIN_FREE_BYTES = 256 << 20
SPOOL_MAX_AGE_S = 7 * 24 * 3600.0

# Recordings waiting for the clip worker, at most: ~10 clips of 1080p H.264 at 8 Mbit/s.
CLIP_BACKLOG_BYTES = 64 << 20
# ... and in number: a worker this many clips behind is overloaded, whatever their size.
CLIP_BACKLOG_COUNT = 16
# At a stop the clip stage makes clips until this long before the stop's budget ends, then sends the CIDs
# still waiting without video: one encode in progress (~1 s on a Pi) and the uploader and spool closing fit.
CLIP_STOP_RESERVE_S = 3.0
# A camera's clip stage this many recordings behind copies the camera's H.264 into the clips that
# clip.width/height/fps would re-encode (a remux takes milliseconds, a re-encode about a second): every read
# keeps its video, at the camera's own size, rather than the overflow going without. A stop does the same.
CLIP_HURRY_BACKLOG = 4

# Sightings kept for clip tracks beyond the longest clip: the clip stage's backlog may run this far
# behind detection.
TRACK_MARGIN_S = 60.0

# Events the running pipeline remembers (for status and the live view); older ones are only in the logs.
RECENT_EVENTS = 100

# Exit codes (sysexits.h where one fits). Only a requested stop, or a job finished (replay, a file
# source without loop, flush), exits 0; systemd's Restart=on-failure sees every other end.
EXIT_OK = 0
EXIT_FAILED = 1  # a run that lost or could not deliver clips (dropped, refused by the server); check FAILs
EXIT_USAGE = 64  # EX_USAGE: wrong command-line arguments
EXIT_DATAERR = 65  # EX_DATAERR: no video could be read from the input
EXIT_NOINPUT = 66  # EX_NOINPUT: an input file is missing
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a stage thread died (open clips are spooled first)
EXIT_CANTCREAT = 73  # EX_CANTCREAT: the spool's disk is full
EXIT_QUEUED = 75  # EX_TEMPFAIL: clips remain queued, try again later
EXIT_CONFIG = 78  # EX_CONFIG: bad configuration

SERVICE_STATE_DIR = "/var/lib/edge-agent"  # systemd's StateDirectory=edge-agent
SERVICE_USER = "edge-agent"  # the unit's User=, made by the sysusers.d entry; its home is SERVICE_STATE_DIR


def default_spool_dir() -> str:
    """systemd's StateDirectory= sets STATE_DIRECTORY; otherwise a folder under the user's state dir."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return str(Path(state.split(":")[0]) / "spool")
    # outside the service (`sudo -u edge-agent edge-agent spool status`, `check`): the service's spool,
    # also before anything made /var/lib/edge-agent, so that `check` names that folder as missing
    if Path(SERVICE_STATE_DIR).is_dir() or _is_service_user():
        return str(Path(SERVICE_STATE_DIR) / "spool")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "edge-agent" / "spool")


def _is_service_user() -> bool:
    """The service's account, by name or by its home (which `sudo -u` and `runuser` put in HOME)."""
    try:
        import pwd

        name = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        name = ""
    return name == SERVICE_USER or os.path.normpath(os.environ.get("HOME") or "/") == SERVICE_STATE_DIR
