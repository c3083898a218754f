"""Stand-in for picamera2/picamera2.py: the `Picamera2` class, its job queue and its event loop, playing a
recorded camera (standin_media.py) instead of a sensor.

Kept as picamera2 0.3.36 has it (function names are picamera2's):
- `__init__`: no camera -> IndexError from `global_camera_info()[camera_num]`; a camera another
  `Picamera2` holds -> RuntimeError "Camera __init__ sequence did not complete." (libcamera's acquire fails).
- the job queue: `dispatch_functions(functions, wait, signal_function, immediate)` appends a `Job` to
  `_job_list` and, when it is the only job and a completed request is waiting (or `immediate`), prods the
  event loop; `wait=False` returns the job, `wait=True` waits with no timeout, a number waits that long
  (TimeoutError from concurrent.futures). `capture_request` is the job
  [wait_for_timestamp_(flush), capture_request_]; `capture_request_` hands over the oldest completed
  request or says "not done".
- `process_requests` (the event loop, one trip per notification): under `lock`, the new requests join
  `completed_requests`, the jobs run in order and the first one not done stops the rest, each new request
  goes to the encoders, then `completed_requests` is trimmed to `_max_queue_len` (1: the newest request is
  kept); finished jobs are signalled after the lock. So a queued `capture_request` that no frame completes
  holds every job behind it.
- `stop()`: with the event loop running, dispatches [stop_] with wait=True and immediate=True: a stop job
  behind a pending capture waits with it, for ever if no frame comes. `stop_` stops the camera
  (`stop_count` + 1), releases the requests it still holds. `stop_recording()` is `stop()` then
  `stop_encoder()`. `cancel_all_and_flush()` cancels every queued job (CancelledError) and empties the queue.
- `close()`: stops the event loop (`stop_preview`), then `stop()`, then gives the camera back.

The stand-in's own (what a test controls, not picamera2's): `PICAMERA2_STANDIN_VIDEO` (the recording; none:
no camera), `PICAMERA2_STANDIN_STALL_AFTER=N` (each start of the camera completes N frames and then
none, as a sensor whose ribbon cable came loose), `standin_deliver(n)` (n more frames after a stall),
`CAMERAS` and `wait_for_cameras` (every Picamera2 made, for a test to reach the one the agent opened), and
readiness waits: `standin_wait_frames`, `standin_wait_jobs`, `closed`.
"""

from __future__ import annotations

import os
import threading
import time
from functools import partial

import libcamera

from .encoders import Encoder
from .job import Job
from .request import CompletedRequest
from .standin_media import Recording, stride

__all__ = ["CAMERAS", "Picamera2", "wait_for_cameras"]

CAMERAS: list[Picamera2] = []
_cameras_made = threading.Condition()
# picamera2 evaluates these in its class body (argument defaults), so bindings without them fail the import
_TRANSFORM = libcamera.Transform()
_SYCC = libcamera.ColorSpace.Sycc()
_acquired: set[int] = set()
_acquired_lock = threading.Lock()


class _Camera:
    """What libcamera's Camera does for picamera2 here: completes a request for each frame while one is
    queued (a frame with no request queued is dropped), on its own thread at the configured rate, stamped
    with time.monotonic_ns() as SensorTimestamp."""

    def __init__(self, picam2: Picamera2, num: int):
        self.picam2 = picam2
        self.num = num
        self._lock = threading.Lock()
        self._queued = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        stall = os.environ.get("PICAMERA2_STANDIN_STALL_AFTER")
        self._stall_after = int(stall) if stall else None
        self._budget: int | None = None
        self.frames = 0  # frames completed since the camera was made
        self.delivered = threading.Condition(self._lock)

    def acquire(self) -> None:
        with _acquired_lock:
            if self.num in _acquired:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            _acquired.add(self.num)

    def release(self) -> None:
        with _acquired_lock:
            _acquired.discard(self.num)

    def start(self, buffer_count: int, fps: float) -> None:
        with self._lock:
            self._queued = buffer_count
            self._budget = self._stall_after
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(fps,), daemon=True, name="standin-camera")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def queue_request(self) -> None:
        with self._lock:
            self._queued += 1

    def deliver(self, frames: int) -> None:
        with self._lock:
            self._budget = (self._budget or 0) + frames

    def _run(self, fps: float) -> None:
        period_ns = int(1e9 / fps)
        next_ns = time.monotonic_ns()
        i = 0
        while not self._stop.is_set():
            delay = (next_ns - time.monotonic_ns()) / 1e9
            if delay > 0 and self._stop.wait(delay):
                break
            sensor_ns = next_ns
            next_ns += period_ns
            with self._lock:
                if self._budget is not None and self._budget <= 0:
                    continue  # stalled: nothing completes
                if self._queued == 0:
                    i += 1
                    continue  # no request to fill: the frame is dropped
                self._queued -= 1
                if self._budget is not None:
                    self._budget -= 1
            self.picam2._request_completed(i, sensor_ns, period_ns)
            i += 1
            with self._lock:
                self.frames += 1
                self.delivered.notify_all()


class _NullPreview:
    """picamera2's NullPreview: the thread that runs the event loop (process_requests) when notified."""

    def __init__(self) -> None:
        self._abort = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, picam2: Picamera2) -> None:
        picam2.attach_preview(self)
        self._abort.clear()
        self.thread = threading.Thread(target=self._loop, args=(picam2,), daemon=True, name="standin-camera")
        self.thread.start()

    def _loop(self, picam2: Picamera2) -> None:
        while not self._abort.is_set():
            if picam2.notifyme.wait(0.2):
                picam2.notifyme.clear()
                picam2.process_requests(self)

    def stop(self, picam2: Picamera2) -> None:
        self._abort.set()
        if self.thread is not None:
            self.thread.join()
        picam2.detach_preview()


class Picamera2:
    def __init__(self, camera_num: int = 0, verbose_console=None, tuning=None, allocator=None):
        self.notifyme = threading.Event()
        self._preview: _NullPreview | None = None
        self.is_open = False
        video = os.environ.get("PICAMERA2_STANDIN_VIDEO")
        if not video or camera_num != 0:
            raise IndexError("list index out of range")  # global_camera_info()[camera_num] with no camera
        self.camera_idx = camera_num
        self.request_lock = threading.Lock()
        self._requestslock = threading.Lock()
        self._requests: list[CompletedRequest] = []
        self._reset_flags()
        try:
            self.recording = Recording(video)
            self.sensor_resolution = self.recording.size
            camera = _Camera(self, camera_num)
            camera.acquire()
        except Exception as exc:
            raise RuntimeError("Camera __init__ sequence did not complete.") from exc
        self.camera: _Camera | None = camera
        self.is_open = True
        self.closed = threading.Event()  # the stand-in's: close() gave the camera back
        with _cameras_made:
            CAMERAS.append(self)
            _cameras_made.notify_all()

    def _reset_flags(self) -> None:
        self.camera = None
        self.camera_config: dict | None = None
        self.started = False
        self.stop_count = 0
        self.configure_count = 0
        self.frames = 0
        self._job_list: list[Job] = []
        self._encoders: set[Encoder] = set()
        self.completed_requests: list[CompletedRequest] = []
        self.lock = threading.Lock()  # protects _job_list and completed_requests
        self._jobs_changed = threading.Condition(self.lock)  # the stand-in's: a test waits on the queue
        self._event_loop_running = False
        self._max_queue_len = 1
        self.stream_map: dict[str, str] = {}

    # --- configuration -------------------------------------------------------------------------

    def create_preview_configuration(self, main=None, lores=None, raw=None, transform=_TRANSFORM,
                                     colour_space=_SYCC, buffer_count=4, controls=None,
                                     display="main", encode="main", queue=True, sensor=None, use_case="preview"):
        return self.create_video_configuration(main, lores, raw, transform, colour_space, buffer_count, controls,
                                               display, encode, queue, sensor, use_case)

    def create_video_configuration(self, main=None, lores=None, raw=None, transform=_TRANSFORM,
                                   colour_space=None, buffer_count=6, controls=None, display="main",
                                   encode="main", queue=True, sensor=None, use_case="video"):
        if self.camera is None:
            raise RuntimeError("Camera not opened")
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"], **lores}
        controls = {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333), **(controls or {})}
        return {"use_case": use_case, "transform": transform, "colour_space": colour_space,
                "buffer_count": buffer_count, "queue": queue, "main": main, "lores": lores, "controls": controls,
                "display": display, "encode": encode}

    def configure(self, camera_config=None) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camera_config.items()}
        main, lores = cfg["main"], cfg.get("lores")
        if tuple(main["size"]) != self.sensor_resolution:
            raise RuntimeError(f"stand-in: the recording is {self.sensor_resolution}, main asks {main['size']}")
        main["stride"] = stride(main["size"][0])
        if lores is not None:
            if lores["format"] not in ("YUV420", "YVU420"):
                raise RuntimeError("lores stream must be YUV")
            if lores["size"][0] > main["size"][0] or lores["size"][1] > main["size"][1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            lores["stride"] = stride(lores["size"][0])
        self._max_queue_len = 1 if cfg["queue"] and cfg["buffer_count"] > 1 else 0
        self.stream_map = {name: name for name in ("main", "lores") if cfg.get(name) is not None}
        self.encode_stream_name = cfg["encode"]
        self.camera_config = cfg
        self.configure_count += 1

    def camera_configuration(self) -> dict:
        return self.camera_config

    def stream_configuration(self, name="main") -> dict:
        return self.camera_config[name]

    # --- the event loop ------------------------------------------------------------------------

    def attach_preview(self, preview: _NullPreview) -> None:
        if self._preview:
            raise RuntimeError("Preview is already running")
        self._preview = preview
        self._event_loop_running = True

    def detach_preview(self) -> None:
        self._preview = None
        self._event_loop_running = False

    def start_preview(self, preview=None, **kwargs) -> None:
        if self._event_loop_running:
            raise RuntimeError("An event loop is already running")
        _NullPreview().start(self)

    def stop_preview(self) -> None:
        if self._preview is None:
            raise RuntimeError("No preview specified.")
        self._preview.stop(self)

    def _request_completed(self, frame: int, sensor_ns: int, period_ns: int) -> None:
        """libcamera completed a request (picamera2's CameraManager.handle_request): queue it, wake the loop."""
        buffers = {}
        lores = self.camera_config.get("lores")
        if lores is not None:
            buffers["lores"] = self.recording.lores(frame, tuple(lores["size"]))
        request = CompletedRequest(self, buffers, {"SensorTimestamp": sensor_ns, "ExposureTime": 10000,
                                                   "FrameDuration": period_ns // 1000}, frame)
        with self._requestslock:
            self._requests.append(request)
        self.notifyme.set()

    def process_requests(self, display=None) -> None:
        with self._requestslock:
            requests, self._requests = self._requests, []
        self.frames += len(requests)
        with self.lock:
            for req in requests:
                req.acquire()
            self.completed_requests += requests
            finished: list[Job] = []
            while self._job_list:
                if self._job_list[0].execute():
                    finished.append(self._job_list.pop(0))
                else:
                    break
            self._jobs_changed.notify_all()
            for req in requests:
                for encoder in self._encoders:
                    if encoder.name in self.stream_map:
                        encoder.encode(encoder.name, req)
                req.release()
            while len(self.completed_requests) > self._max_queue_len:
                self.completed_requests.pop(0).release()
        for job in finished:
            job.signal()

    def _run_process_requests(self) -> None:
        self.notifyme.set()

    def dispatch_functions(self, functions, wait, signal_function=None, immediate=False):
        if wait is None:
            wait = signal_function is None
        timeout = None if wait is True else wait
        with self.lock:
            only_job = not self._job_list
            job = Job(functions, signal_function)
            self._job_list.append(job)
            self._jobs_changed.notify_all()
            if only_job and (self.completed_requests or immediate):
                self._run_process_requests()
        return job.get_result(timeout=timeout) if wait else job

    def wait(self, job: Job, timeout=None):
        return job.get_result(timeout=timeout)

    def cancel_all_and_flush(self) -> None:
        with self.lock:
            for job in self._job_list:
                job.cancel()
            self._job_list = []
            self._jobs_changed.notify_all()

    # --- starting and stopping -----------------------------------------------------------------

    def start_(self) -> None:
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        fps = float(self.camera_config["controls"].get("FrameRate", 30.0))
        self.recording.packet(0)  # read and map the recording before frames are timed, as buffers a sensor fills
        if self.camera_config.get("lores") is not None:
            self.recording.lores(0, tuple(self.camera_config["lores"]["size"]))
        self.camera.start(self.camera_config["buffer_count"], fps)
        self.started = True

    def start(self, config=None, show_preview=False) -> None:
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if show_preview is not None and not self._event_loop_running:
            self.start_preview(show_preview)
        self.start_()

    def stop_(self, request=None):
        if self.started:
            self.stop_count += 1
            self.camera.stop()
            self.started = False
            with self._requestslock:
                unseen, self._requests = self._requests, []
            for r in unseen:
                r.release()
            while self.completed_requests:
                self.completed_requests.pop(0).release()
        return (True, None)

    def stop(self) -> None:
        if not self.started:
            return
        if self._preview is not None and self._event_loop_running:
            self.dispatch_functions([self.stop_], wait=True, immediate=True)
        else:
            self.stop_()

    def close(self) -> None:
        if self._preview:
            self.stop_preview()
        if not self.is_open:
            return
        self.stop()
        self.camera.release()
        self.is_open = False
        self.camera = None
        self.camera_config = None
        self.closed.set()

    # --- encoders ------------------------------------------------------------------------------

    def start_encoder(self, encoder=None, output=None, pts=None, quality=None, name=None) -> None:
        if output is not None:
            encoder.output = output
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        name = name or self.encode_stream_name
        stream = self.camera_config.get(name)
        if stream is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        encoder.name = name
        encoder.size = tuple(stream["size"])
        encoder.format = stream["format"]
        encoder.start(quality)
        with self.lock:
            self._encoders.add(encoder)

    def stop_encoder(self, encoders=None) -> None:
        remove = list(self._encoders) if encoders is None else [encoders]
        for encoder in remove:
            encoder.stop()
        with self.lock:
            for encoder in remove:
                self._encoders.discard(encoder)

    def start_recording(self, encoder, output, pts=None, config=None, quality=None, name=None) -> None:
        if config is not None:
            self.configure(config)
        self.start_encoder(encoder, output, pts=pts, quality=quality, name=name)
        self.start()

    def stop_recording(self) -> None:
        self.stop()
        self.stop_encoder()

    # --- captures ------------------------------------------------------------------------------

    def wait_for_timestamp_(self, timestamp_ns):
        if not timestamp_ns:
            return (True, None)
        while self.completed_requests:
            md = self.completed_requests[0].get_metadata()
            if md["SensorTimestamp"] - 1000 * md["ExposureTime"] >= timestamp_ns:
                return (True, None)
            self.completed_requests.pop(0).release()
        return (False, None)

    def capture_request_(self):
        # the request's "use" goes from completed_requests to the caller, who must release it
        if not self.completed_requests:
            return (False, None)
        return (True, self.completed_requests.pop(0))

    def capture_request(self, wait=None, signal_function=None, flush=None):
        if flush is True:
            flush = time.monotonic_ns()
        functions = [partial(self.wait_for_timestamp_, flush), self.capture_request_]
        return self.dispatch_functions(functions, wait, signal_function)

    # --- the stand-in's own --------------------------------------------------------------------

    def standin_deliver(self, frames: int) -> None:
        """A stalled camera completes `frames` more frames."""
        if self.camera is not None:
            self.camera.deliver(frames)

    def standin_wait_frames(self, frames: int, timeout: float) -> bool:
        """Wait until the camera has completed `frames` frames since it was made."""
        cam = self.camera
        if cam is None:
            return False
        with cam.delivered:
            return cam.delivered.wait_for(lambda: cam.frames >= frames, timeout)

    def standin_wait_jobs(self, jobs: int, timeout: float, processed: int = 0) -> bool:
        """Wait until exactly `jobs` jobs are queued once the event loop has processed `processed` frames
        (not while the event loop hangs: it holds the lock)."""
        with self._jobs_changed:
            return self._jobs_changed.wait_for(lambda: len(self._job_list) == jobs and self.frames >= processed,
                                               timeout)

    def standin_unhang(self) -> None:
        """Give every hung encoder its buffer back (a test's teardown)."""
        for encoder in list(self._encoders):
            encoder.standin_unhang()



def wait_for_cameras(count: int, timeout: float) -> bool:
    """The stand-in's: wait until `count` Picamera2 objects have been made."""
    with _cameras_made:
        return _cameras_made.wait_for(lambda: len(CAMERAS) >= count, timeout)
