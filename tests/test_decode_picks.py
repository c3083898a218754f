"""The decode stage picks one frame in each 1/rate_hz slot of capture time as packets arrive, and
does not decode what no one needs: non-reference B-frames outside the picks, and (intra-only codecs)
any picture outside them. What it hands detection is exactly the picture a full decode gives."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from edge_agent.capture.media import GrayFrame, Packet, luma, open_decoder, to_av_packet
from edge_agent.capture.source import AvSource
from edge_agent.config import Config, SourceConfig
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import END, FrameSlot
from edge_agent.pipeline.decode import DecodeStage, FramePicker
from edge_agent.stage import Backpressure, FailureBox, StageThread
from tests.media_factory import make_video


def read_packets(video: Path) -> list[Packet]:
    src = AvSource(SourceConfig(kind="file", path=str(video)))
    src.open()
    try:
        return list(src.packets())
    finally:
        src.close()


def at_rate(rate_hz: float) -> Config:
    """A config whose detection picks `rate_hz` frames a second, every one decoded (no keyframe window)."""
    return Config.model_validate({"detector": {"rate_hz": rate_hz, "max_blind_s": 0}})


def through_stage(packets: list[Packet], rate_hz: float) -> tuple[DecodeStage, list[GrayFrame]]:
    """The real stage on its own thread, fed as the capture thread feeds it, drained as detect drains it."""
    metrics = Metrics()
    slot = FrameSlot(lambda: Backpressure.BLOCK, metrics=metrics)
    stage = DecodeStage(slot, metrics, lambda: Backpressure.BLOCK, at_rate(rate_hz))
    got: list[GrayFrame] = []

    def drain() -> None:
        while (item := slot.get()) is not END:
            got.append(item)

    consumer = threading.Thread(target=drain)
    worker = StageThread(stage, stage.finish, FailureBox())
    consumer.start()
    worker.start()
    for p in packets:
        stage.offer(p)
    stage.end()
    assert worker.join(60)
    consumer.join(60)
    return stage, got


def every_picture(packets: list[Packet]) -> tuple[dict[float, np.ndarray], dict[float, str]]:
    """Every picture decoded, by capture time: the luma and the picture type."""
    info = packets[0].stream
    t_of = {p.pts: p.t for p in packets}
    dec = open_decoder(info, threads=False)
    lumas: dict[float, np.ndarray] = {}
    kinds: dict[float, str] = {}
    for pkt in [to_av_packet(p, info.time_base) for p in packets] + [None]:
        for frame in dec.decode(pkt):
            t = t_of[frame.pts]
            lumas[t] = luma(frame).copy()
            kinds[t] = av.video.frame.PictureType(frame.pict_type).name
    return lumas, kinds


@pytest.mark.parametrize("rate_hz", [10.0, 30.0])
def test_b_frames_outside_the_picks_are_skipped_and_the_picks_are_the_true_pictures(
        tmp_path: Path, rate_hz: float) -> None:
    video = make_video(tmp_path / "b.mp4", seconds=4, bframes=3, codes=[("CID-B-1", 1.0, 3.0)])
    packets = read_packets(video)
    full, kinds = every_picture(packets)
    assert sum(k == "B" for k in kinds.values()) > len(packets) // 3  # the video really has B-frames

    stage, got = through_stage(packets, rate_hz)

    assert stage.status().errors == 0
    if rate_hz < 30:
        assert stage.status().decoded < len(packets) - len(packets) // 4  # non-reference pictures skipped
    else:
        assert stage.status().decoded == len(packets)  # every picture is a pick: B-frames decoded too
    slots = [int(f.t * rate_hz + 1e-6) for f in got]
    assert slots == list(range(round(4 * rate_hz)))  # one pick in every slot of the 4 s, in presentation order
    for f in got:  # the references the skipped pictures would have needed were all decoded
        assert np.array_equal(f.gray, full[f.t]), f"picture at t={f.t:.3f} differs from a full decode"


def test_without_b_frames_every_picture_is_decoded_and_the_picks_are_evenly_spaced(tmp_path: Path) -> None:
    video = make_video(tmp_path / "p.mp4", seconds=3, bframes=0)
    packets = read_packets(video)
    stage, got = through_stage(packets, rate_hz=10.0)
    assert stage.status().decoded == len(packets)  # every picture is a reference: nothing can be skipped
    gaps = {round(b.t - a.t, 3) for a, b in zip(got, got[1:], strict=False)}
    assert gaps == {0.1} and len(got) == 30


def test_an_intra_only_source_decodes_only_the_picks(tmp_path: Path) -> None:
    video = make_video(tmp_path / "m.avi", seconds=2, codec="mjpeg")
    packets = read_packets(video)
    stage, got = through_stage(packets, rate_hz=5.0)
    assert len(got) == 10 and stage.status().decoded == 10


@pytest.mark.parametrize("rate_hz", [10.0, 30.0, 60.0])
def test_the_picker_takes_the_first_arrival_of_each_slot(rate_hz: float) -> None:
    # decode order of a 30 fps stream with B-frames: I0 P3 B1 B2 P6 B4 B5 ...
    order = [0]
    for base in range(0, 30, 3):
        order += [base + 3, base + 1, base + 2]
    picker = FramePicker()
    picked = [i for i in order if picker.pick(i / 30, rate_hz)]
    slots = [int(i / 30 * rate_hz + 1e-6) for i in picked]
    assert len(slots) == len(set(slots))  # never two in a slot
    assert set(slots) == {int(i / 30 * rate_hz + 1e-6) for i in range(31)}  # every slot served
    if rate_hz >= 30:
        assert sorted(picked) == list(range(31))  # a rate at or above the frame rate analyses every frame


def test_a_new_session_or_rate_starts_the_slots_again() -> None:
    picker = FramePicker()
    assert picker.pick(5.0, 10.0) and not picker.pick(5.01, 10.0)
    picker.reset()
    assert picker.pick(5.01, 10.0)
    assert picker.pick(5.02, 5.0) and not picker.pick(5.1, 5.0)  # a reload to 5 Hz: 200 ms slots from now on


def test_a_camera_sessions_start_up_backlog_waits_for_the_decoder_and_a_decoder_behind_drops_to_a_keyframe(
        tmp_path: Path) -> None:
    """An untimed pipe hands over ~2.3 s of video at once when its session opens (FFmpeg's probing, the
    frame-rate prefetch): that backlog is queued, not dropped. Past 4 s of video waiting, the decoder
    is behind: packets are dropped (counted), and go on being dropped up to the next keyframe."""
    packets = read_packets(make_video(tmp_path / "v.mp4", seconds=6, gop=30))  # a keyframe every second
    drop = lambda: Backpressure.DROP  # noqa: E731
    stage = DecodeStage(FrameSlot(drop, metrics=Metrics()), Metrics(), drop, at_rate(10.0))
    for p in packets[:75]:  # 2.5 s at once, the decode thread not yet taking any
        stage.offer(p)
    assert stage.status().dropped == 0 and stage.inbox.qsize() == 75
    for p in packets[75:]:
        stage.offer(p)
    queued = stage.inbox.qsize()
    assert queued == 121  # 4 s of video after the first packet, then nothing: the decoder is behind
    assert stage.status().dropped == len(packets) - queued


def camera_stage_fed_ahead(packets: list[Packet]) -> tuple[DecodeStage, list[GrayFrame]]:
    """A DROP stage whose inbox holds all of `packets` before its thread starts: the camera ran ahead."""
    metrics = Metrics()
    slot = FrameSlot(lambda: Backpressure.BLOCK, metrics=metrics)  # the detector keeps every frame here
    stage = DecodeStage(slot, metrics, lambda: Backpressure.DROP, at_rate(10.0))
    for p in packets:
        stage.offer(p)
    stage.end()
    got: list[GrayFrame] = []
    consumer = threading.Thread(target=lambda: got.extend(iter(slot.get, END)))
    worker = StageThread(stage, stage.finish, FailureBox())
    consumer.start()
    worker.start()
    assert worker.join(60)
    consumer.join(60)
    return stage, got


@pytest.mark.parametrize(("seconds", "threaded"), [(3.9, True), (2.5, False)])
def test_a_decoder_far_behind_the_camera_takes_frame_threads_and_drops_nothing(
        tmp_path: Path, seconds: float, threaded: bool) -> None:
    video = make_video(tmp_path / "live.mp4", seconds=seconds, gop=15, codes=[("CID-T-1", 0.5, 3.0)])
    packets = read_packets(video)
    full, _ = every_picture(packets)

    stage, got = camera_stage_fed_ahead(packets)

    st = stage.status()
    assert (st.threaded, st.dropped, st.errors) == (threaded, 0, 0)
    assert len(got) >= int(seconds * 10) - 1  # one pick a slot, the whole video
    for frame in got:  # the pictures from either decoder are the true ones
        assert np.array_equal(frame.gray, full[frame.t])


def test_a_camera_session_that_ends_gives_up_the_pictures_its_decoder_holds_with_their_capture_times(
        tmp_path: Path) -> None:
    """A camera that stalls or ends with B-frames in flight: its decoder holds the last pictures for
    reordering. At the session's end they come out at once, each with its own packet's capture time and
    picture, not when the camera is back (a new decoder) or the agent stops."""
    packets = read_packets(make_video(tmp_path / "b.mp4", seconds=2, bframes=3, codes=[("CID-END-1", 0.5, 2.0)]))
    full, _ = every_picture(packets)
    metrics = Metrics()
    slot = FrameSlot(lambda: Backpressure.BLOCK, metrics=metrics)  # the detector keeps every frame here
    stage = DecodeStage(slot, metrics, lambda: Backpressure.DROP, at_rate(10.0))
    got: list[GrayFrame] = []
    consumer = threading.Thread(target=lambda: got.extend(iter(slot.get, END)))
    worker = StageThread(stage, stage.finish, FailureBox())
    consumer.start()
    worker.start()
    try:
        for p in packets:
            stage.offer(p)
        stage.session_ended()  # the capture thread, as the session ends: the camera stays away
        picks = {int(p.t * 10 + 1e-6) for p in packets}
        deadline = time.monotonic() + 30
        while len(got) < len(picks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(int(f.t * 10 + 1e-6) for f in got) == sorted(picks)  # the last slots' pictures too
        for frame in got:
            assert np.array_equal(frame.gray, full[frame.t])
    finally:
        stage.end()
        assert worker.join(60)
        consumer.join(60)
