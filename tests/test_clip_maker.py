"""Clips start on a keyframe, show exactly their recording's [start_t, end_t) (the lead-in before
start_t hidden by an edit list), have strictly increasing timestamps, carry +faststart, are H.264
whatever the source, and are validated by decoding them back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import pytest

from edge_agent.capture.media import Packet
from edge_agent.capture.source import AvSource
from edge_agent.config import ClipConfig, SourceConfig
from edge_agent.pipeline.base import Finished
from edge_agent.pipeline.clip_maker import ClipError, ClipMaker, validate
from edge_agent.pipeline.edit_list import EditListError, end_presentation
from edge_agent.pipeline.ring import RingBuffer
from tests.media_factory import make_video


def record(video: Path, start_t: float, end_t: float) -> Finished:
    """Read a real file through the real source into the ring and cut one recording."""
    done: list[Finished] = []
    ring = RingBuffer(60.0, 1 << 30, done.append)
    src = AvSource(SourceConfig(kind="file", path=str(video)))
    src.open()
    packets: list[Packet] = list(src.packets())
    src.close()
    started = False
    for p in packets:
        if not started and p.t >= start_t + 0.5:
            ring.start_recording("ev", start_t, end_t)
            started = True
        ring.offer(p)
    ring.end()
    assert done, "recording did not finish"
    return done[0]


def pts_of(path: Path) -> list[int]:
    """Presented timestamps: the lead-in an edit list hides left out."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return [p.pts for p in c.demux(v) if p.size and not p.is_discard]


@pytest.fixture(scope="module")
def h264_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "in.mp4", seconds=8, bframes=2)


@pytest.mark.slow
def test_remuxed_clip_starts_on_keyframe_with_rebased_pts(h264_video: Path, tmp_path: Path) -> None:
    rec = record(h264_video, start_t=2.3, end_t=6.0)
    result = ClipMaker(ClipConfig()).make(rec, tmp_path / "clip.mp4")
    assert result.remuxed
    assert rec.packets[0].t == 2.0  # last keyframe at or before 2.3 with a 1 s GOP
    with av.open(str(result.path)) as c:
        v = c.streams.video[0]
        first = next(p for p in c.demux(v) if p.size)
        assert first.is_keyframe and first.is_discard and first.pts < 0  # the lead-in, hidden
    pts = sorted(pts_of(result.path))
    assert pts[0] == 0
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    assert result.info.codec == "h264"
    assert abs(result.info.duration_s - 3.7) < 0.02 and result.info.frames == 111  # [2.3, 6.0)
    assert abs(result.info.lead_in_s - 0.3) < 0.02
    data = result.path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart


def test_clip_frames_decode_back(h264_video: Path, tmp_path: Path) -> None:
    rec = record(h264_video, start_t=1.0, end_t=4.0)
    result = ClipMaker(ClipConfig()).make(rec, tmp_path / "clip.mp4")
    with av.open(str(result.path)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == result.info.frames == 90  # [1.0 s, 4.0 s)


def test_resize_reencodes_falling_back_to_libx264(h264_video: Path, tmp_path: Path) -> None:
    cfg = ClipConfig(width=320, encoders=["no_such_encoder", "h264_v4l2m2m", "libx264"])
    rec = record(h264_video, start_t=1.0, end_t=3.0)
    maker = ClipMaker(cfg)
    result = maker.make(rec, tmp_path / "clip.mp4")
    assert not result.remuxed and result.encoder == "libx264"
    assert (result.info.width, result.info.height) == (320, 180)
    assert result.info.codec == "h264"
    assert 1.9 <= result.info.duration_s <= 2.1


def test_fps_cap_drops_frames(h264_video: Path, tmp_path: Path) -> None:
    rec = record(h264_video, start_t=1.0, end_t=4.0)
    result = ClipMaker(ClipConfig(fps=10)).make(rec, tmp_path / "clip.mp4")
    assert 28 <= result.info.frames <= 31


def test_mjpeg_source_is_encoded_to_h264(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.avi", seconds=4, codec="mjpeg")
    rec = record(video, start_t=0.5, end_t=3.0)
    result = ClipMaker(ClipConfig(encoders=["libx264"])).make(rec, tmp_path / "clip.mp4")
    assert result.info.codec == "h264" and not result.remuxed
    assert 2.4 <= result.info.duration_s <= 2.6  # every MJPEG frame is a keyframe: exact start


def test_no_working_encoder_is_a_clip_error(h264_video: Path, tmp_path: Path) -> None:
    rec = record(h264_video, start_t=1.0, end_t=2.0)
    with pytest.raises(ClipError, match="no H.264 encoder"):
        ClipMaker(ClipConfig(width=320, encoders=["no_such_encoder"])).make(rec, tmp_path / "clip.mp4")
    assert not (tmp_path / "clip.mp4").exists()


def test_an_encoder_that_failed_is_tried_again_for_the_next_clip(h264_video: Path, tmp_path: Path) -> None:
    """One failed encode (here: the output cannot be written) is not the end of an encoder: the clip
    fails with the real cause, the maker reports encoding down, and the next clip is encoded."""
    rec = record(h264_video, start_t=1.0, end_t=2.0)
    maker = ClipMaker(ClipConfig(width=320, encoders=["libx264"]))
    with pytest.raises(ClipError, match=r"libx264: .*No such file or directory"):
        maker.make(rec, tmp_path / "gone" / "clip.mp4")
    down = maker.status()
    assert down.encoding_error and "none of them exists" not in down.encoding_error
    (x264,) = down.encoders
    assert x264.failures == 1 and x264.retry_in_s > 0
    result = maker.make(record(h264_video, start_t=1.0, end_t=2.0), tmp_path / "clip.mp4")
    assert result.encoder == "libx264" and result.info.frames == 30
    assert maker.status().encoding_error is None and maker.status().encoders[0].failures == 0


def test_a_b_frame_clip_shows_exactly_its_range_with_the_reference_after_it_hidden(tmp_path: Path) -> None:
    """IBBBP...: the B-frames shown just before the end are predicted from the P-frame shown after it.
    The file must hold that P-frame and must not show it: the edit list ends the presentation."""
    video = make_video(tmp_path / "b.mp4", seconds=5, bframes=3)
    rec = record(video, start_t=1.0, end_t=75 / 30)  # frame 74 is a B-frame, its forward reference is 76
    assert any(p.t >= rec.end_t for p in rec.packets)  # the recording holds a picture past its end
    clip = ClipMaker(ClipConfig()).make(rec, tmp_path / "clip.mp4")
    assert clip.remuxed and clip.info.frames == 45 and clip.info.duration_s == 1.5
    with av.open(str(clip.path)) as c:
        times = [round(f.time * 30) for f in c.decode(c.streams.video[0])]
    assert times == list(range(45))  # frames 30..74 of the source, shown from 0, nothing after
    with av.open(str(clip.path)) as c:
        hidden_after = [p for p in c.demux(video=0) if p.size and p.is_discard and p.pts > 0]
    assert hidden_after  # in the file, not shown


def test_ending_the_presentation_needs_the_edit_list_our_muxer_writes(tmp_path: Path) -> None:
    """An MP4 without an edit list is refused as it is, never half-patched (the clip maker then
    re-encodes the clip instead of remuxing it)."""
    src = make_video(tmp_path / "b.mp4", seconds=2, bframes=3)
    plain = tmp_path / "plain.mp4"
    with av.open(str(src)) as inp, av.open(str(plain), "w", format="mp4", options={"use_editlist": "0"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for pkt in inp.demux(video=0):
            if pkt.size:
                pkt.stream = stream
                out.mux(pkt)
    before = plain.read_bytes()
    with pytest.raises(EditListError, match="edts"):
        end_presentation(plain, 1.0)
    assert plain.read_bytes() == before


def test_a_whole_gop_of_lead_in_that_the_reader_drops_is_still_a_valid_remux(h264_video: Path, tmp_path: Path) -> None:
    """Packets from the keyframe at 2.0 s, the clip from the keyframe at 3.0 s: the edit list starts on a
    keyframe, so FFmpeg's reader leaves the earlier GOP out of its index altogether. Validation counts
    the frames presented (90 of 90), not the samples stored (more), and keeps the remux."""
    rec = record(h264_video, start_t=2.5, end_t=6.0)
    assert rec.packets[0].t == 2.0
    rec = dataclasses.replace(rec, start_t=3.0)
    result = ClipMaker(ClipConfig()).make(rec, tmp_path / "clip.mp4")
    assert result.remuxed and result.info.frames == 90
    with av.open(str(result.path)) as c:
        assert c.streams.video[0].frames > 90  # the sample table still holds the dropped GOP
        assert sum(1 for _ in c.decode(video=0)) == 90


def test_truncated_clip_fails_validation(h264_video: Path, tmp_path: Path) -> None:
    rec = record(h264_video, start_t=1.0, end_t=4.0)
    path = ClipMaker(ClipConfig()).make(rec, tmp_path / "clip.mp4").path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ClipError, match="cut short"):
        validate(path)
    with pytest.raises(ClipError, match="cut short"):
        validate(path, 90)


def test_a_timestamp_jump_that_cannot_be_remuxed_is_re_encoded(h264_video: Path, tmp_path: Path) -> None:
    """A camera that restarts its clock mid-recording: copying the packets cannot give an MP4 with
    increasing timestamps, so the clip is encoded from the capture times instead of going out without
    video."""
    rec = record(h264_video, start_t=1.0, end_t=5.0)
    half = len(rec.packets) // 2
    jump = rec.packets[half].pts  # the second half's timestamps start again from zero
    rec = dataclasses.replace(rec, packets=rec.packets[:half] + tuple(
        dataclasses.replace(p, pts=p.pts - jump, dts=None if p.dts is None else p.dts - jump)
        for p in rec.packets[half:]))
    result = ClipMaker(ClipConfig()).make(rec, tmp_path / "clip.mp4")
    assert not result.remuxed and result.encoder == "libx264"
    pts = pts_of(result.path)
    assert len(pts) >= len(rec.packets) - 2 and sorted(pts) == sorted(set(pts))
    assert 3.8 <= result.info.duration_s <= 4.2


def test_a_capture_clock_step_of_a_few_ms_is_one_moment_when_a_15_fps_clip_is_encoded(tmp_path: Path) -> None:
    """A live camera's clock re-anchored to arrival can give two frames capture times a few ms apart
    (seen at the start of a 15 fps pipe session). Encoded at the camera's rate, both fell on one
    encoder tick and the muxer refused the clip (EINVAL): the later is dropped instead."""
    video = make_video(tmp_path / "cam15.mp4", seconds=4.0, fps=15, codes=[("CID-15", 1.0, 3.0)])
    rec = record(video, start_t=0.5, end_t=3.5)
    step = len(rec.packets) // 2
    shift = rec.packets[step].t - rec.packets[step - 1].t - 0.002  # frame `step` 2 ms after the one before
    rec = dataclasses.replace(rec, packets=rec.packets[:step] + tuple(
        dataclasses.replace(p, t=p.t - shift) for p in rec.packets[step:]))
    result = ClipMaker(ClipConfig(width=320)).make(rec, tmp_path / "clip.mp4")
    assert not result.remuxed and result.encoder == "libx264"
    assert 43 <= result.info.frames <= 45  # 3 s at 15 fps, the frame 2 ms after another one dropped
