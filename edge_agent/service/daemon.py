"""The long-running service around the pipeline (what `edge-agent run` starts).

Owns what a daemon needs and the pipeline does not: the spool and uploader, signals (SIGTERM
stops, SIGHUP reloads), config-file watching, systemd notification (READY once frames flow,
WATCHDOG while capture keeps its bounds, STATUS, STOPPING) and the web server (live view, /metrics, /healthz).

The watchdog is for a hung agent, not an absent camera. A camera that is away is the capture stage's to
retry (with back-off, for ever): the daemon stays up, keeps delivering what is queued and says so
(/healthz, edge_agent_source_up, edge_agent_source_away_seconds; the capture's log lines). WATCHDOG=1
stops when the main loop stops turning or the capture thread outlives the bound of what it is doing
(`CaptureStatus.overdue_s`: stuck where no timeout reaches), and systemd restarts the service.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__, clock_sync, const
from edge_agent.config import Config, ConfigError, config_sha256, load_config
from edge_agent.logs import setup_logging
from edge_agent.metrics import Metrics
from edge_agent.service.sdnotify import Notifier
from edge_agent.service.wakeup import Wakeup

if TYPE_CHECKING:
    from edge_agent.app import Reconfigured

log = logging.getLogger(__name__)

# SIGTERM must end within systemd's stop timeout (TimeoutStopSec=20 in the unit): 15 s budget.
STOP_BUDGET_S = 15.0
TICK_S = 1.0
# how much longer systemd waits for the start at each step of a long spool recovery (one per 500 reads)
RECOVERY_EXTEND_S = 60.0


class Daemon:
    def __init__(self, cfg: Config, path: str | None, watch: bool = True):
        from edge_agent.app import Agent

        self.path = path
        self.watch = watch  # reload when the config file is saved, besides SIGHUP
        self.metrics = Metrics()
        self.notifier = Notifier()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wakeup: Wakeup | None = None  # made by run(): signals wake the main loop at once
        self._watcher: Any = None
        self._metrics_server: Any = None
        self.live_view: Any = None  # with the web server: the technician's live view
        self._last_reload = "none"  # none | applied | refused, for /healthz (a status, never the error text)
        self._stuck = False  # the capture thread is past its bound: no WATCHDOG=1 (said once per change)
        self.fps = 0.0  # frames a second over the main loop's last tick
        # the composition root: the one holder of the running config; parts are built by `build`
        self.agent = Agent(cfg, self.metrics)
        self._config_loaded(cfg)
        self._clock()

    # --- signals --------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        def on_stop(signum: int, _frame: Any) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self._stop.set()

        def on_hup(_signum: int, _frame: Any) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # --- reload ---------------------------------------------------------------------------------

    def _reload_from_file(self) -> None:
        if not self.path:
            log.info("reload asked but no config file is in use")
            return
        self.notifier.reloading()
        log.info("reload requested (SIGHUP) path=%s", self.path)
        if self._watcher is not None:
            self._reload_through_watcher()
            self.notifier.ready()
            return
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            self._refused(exc.lines)
        else:
            self._reloaded(new)
        self.notifier.ready()

    def _reload_through_watcher(self) -> None:
        """SIGHUP beside the file watcher: the watcher's own check, so a save the watcher has already
        applied (or refused) is not counted a second time."""
        from edge_agent.service.reload import CheckOutcome

        outcome = self._watcher.reload_now().outcome
        if outcome is CheckOutcome.UNCHANGED:
            log.info("reload: the config is unchanged since it was last read (last reload: %s)", self._last_reload)
        elif outcome is CheckOutcome.AWAY:
            log.warning("reload: %s is missing (mid-save?); it is read again when it is back", self.path)

    def _refused(self, lines: list[str]) -> None:
        """A reload whose config does not load: the running config stays, and the fleet sees it
        (edge_agent_config_reloads_total{result="refused"}, its alert, /healthz)."""
        self.agent.refuse(lambda: self._count_refused(lines))

    def _count_refused(self, lines: list[str]) -> None:
        for line in lines:
            log.error("reload refused, keeping the running config: %s", line)
        self.metrics.config_reloads.labels(result="refused").inc()
        self.metrics.config_last_reload_successful.set(0)
        self._last_reload = "refused"

    def _reloaded(self, new: Config) -> None:
        """A config that loads, from either trigger (the watcher's thread, or the main loop after SIGHUP):
        the composition root hands every registered part its share, one reload at a time."""
        self.agent.reconfigure(new, then=self._applied)

    def _applied(self, done: Reconfigured) -> None:
        """Under the reload lock, after the parts: the log line, the reload metrics and /healthz."""
        from edge_agent.service.reload import describe_changes

        old, new = done.old, done.new
        self._config_loaded(new)
        self.metrics.config_reloads.labels(result="applied").inc()
        self._last_reload = "applied"
        if not done.live and not done.restart:
            return
        source = [k for k in done.restart if k.startswith("source.")]  # the capture reopens it in process
        needs_process_restart = [k for k in done.restart if k not in source]
        if needs_process_restart:
            log.warning("reload: these keys apply only after a service restart: %s",
                        describe_changes(old, new, needs_process_restart))
        log.info("config reloaded live: %s; source restarted: %s", describe_changes(old, new, done.live) or "-",
                 describe_changes(old, new, source) or "-")

    def _config_loaded(self, cfg: Config) -> None:
        self.metrics.config_last_reload_successful.set(1)
        self.metrics.config_last_reload_success_timestamp_seconds.set(time.time())
        self.metrics.info.set_only(device_id=cfg.device_id, site=cfg.site or "", source_kind=cfg.source.kind,
                                   config_sha256=config_sha256(cfg))

    @property
    def cfg(self) -> Config:
        """The running config, as the composition root holds it (a reload replaces it there)."""
        return self.agent.cfg

    @property
    def config(self) -> Config:
        return self.agent.cfg

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """Live part: the log level, and the device's name and site in edge_agent_info."""
        if "log_level" in changed:
            setup_logging(new.log_level)
        self._config_loaded(new)

    def _clock(self) -> None:
        # unknown (no adjtimex) counts as not synchronised: nothing vouches for the clips' timestamps
        self.metrics.clock_synchronized.set(int(bool(clock_sync.synchronized())))

    # --- main loop ------------------------------------------------------------------------------

    def run(self) -> int:
        """Build the parts through the composition root, run until asked to stop (exit 0), until a
        finite file source ends (0), or until a stage dies (its exit code, after open clips are
        spooled)."""
        self._install_signals()
        access = None
        if self.cfg.http.port:
            from edge_agent.delivery.credentials import CredentialError
            from edge_agent.service.http import ExposureRefused, access_for

            try:  # refused before anything starts: a camera open to the network is a config error
                access = access_for(self.cfg.http)
            except (ExposureRefused, CredentialError) as exc:
                log.error("web server refused: %s", exc)
                return const.EXIT_CONFIG
        self._wakeup = Wakeup()
        self._wakeup.on_signals()  # a signal that came before this is already in _stop/_reload
        code = const.EXIT_SOFTWARE  # an exception escaping start or the loop
        try:
            self.build(access)
            self.start()
            code = self._loop()
        finally:
            if not self.shutdown() and code == const.EXIT_OK:
                code = const.EXIT_SOFTWARE
            self._wakeup.close()
        return code

    def build(self, access: Any = None) -> None:
        """Build the parts through the composition root, in order (the web server only with `access`);
        `shutdown()` stops whatever was built, also after a failure half-way."""
        from edge_agent.pipeline.events import EventLog

        self.agent.take_live("service", ("log_level", "device_id", "site"), self)
        self.spool = self.agent.spool(progress=self._recovering)  # recovery happens here, before READY
        # recent events and their delivery state, for the live view
        self.events = EventLog(keep=const.RECENT_EVENTS)
        self.uploader = self.agent.uploader(self.events.upload_result, thread=False)
        self.pipeline = self.agent.pipeline(on_event=lambda _ev: self.uploader.wake(), events=self.events)
        if access is not None:
            self._start_http(access)
        if self.path and self.watch:
            from edge_agent.service.reload import ConfigWatcher

            self._watcher = ConfigWatcher(Path(self.path), self._reloaded, self._refused)
            self.agent.add_part("config watcher", lambda _s: self._watcher.stop())

    def _recovering(self, done: int, of: int) -> None:
        """A long spool recovery (after a crash or a power cut, every queued clip is checked): systemd is told
        to wait for it, and `systemctl status` says how far it is."""
        self.notifier.extend_timeout(RECOVERY_EXTEND_S, f"recovering the spool: {done} of {of} reads checked")

    def start(self) -> None:
        """Start what `build` made: the config watcher, the uploader, the pipeline."""
        cfg = self.cfg
        if self._watcher is not None:
            self._watcher.start()
        self.uploader.start()
        self.pipeline.start()
        # whether saving the file reloads it (otherwise only SIGHUP does): said from the watcher itself
        log.info("started version=%s device_id=%s source=%s upload=%s spool=%s config_watch=%s", __version__,
                 cfg.device_id, cfg.source.kind, cfg.upload.url or "-", cfg.spool.dir,
                 "on" if self._watcher is not None else "off")

    def _start_http(self, access: Any) -> None:
        from edge_agent.service.http import WebServer
        from edge_agent.service.liveview import daemon_view

        cfg = self.cfg
        try:
            view = daemon_view(cfg, self.pipeline.view_feed(), self.spool, lambda: self.fps)
            self.live_view = view
            self.agent.take_live("live view", ("device_id", "detector"), view)
            self._metrics_server = WebServer(self.metrics, cfg.http.host, cfg.http.port, self._health, view=view,
                                             access=access)
            self._metrics_server.start()
        except OSError as exc:  # a port clash must not stop clip delivery (nor restart-loop the service)
            log.error("web server off: %s", exc)
            self._metrics_server = None
            return
        self.agent.add_part("http", lambda _s: self._metrics_server.stop() if self._metrics_server else None)

    def _health(self) -> tuple[bool, dict[str, Any]]:
        st = self.pipeline.status()
        cap = st.capture
        age = cap.last_frame_age_s
        # /healthz is open without a password: figures only, never the error's text (it names the source)
        # frames flowing, clips that need re-encoding getting video (some encoder works), room for clips
        spool = self.spool.status()
        ok = (age is not None and age < self.cfg.source.stall_s and st.clips.encoding_error is None
              and not spool.disk_full)
        away = cap.away_s
        return ok, {"last_frame_age_s": None if age is None else round(age, 2),
                    "spool_clips": spool.clips, "source_error": cap.source_error is not None,
                    # the camera: up, away (being reopened: since when, Unix seconds, and how often tried) or
                    # starting; a capture thread stuck past its bound is what systemd's watchdog restarts
                    "source": cap.state, "source_away_s": None if away is None else round(away, 1),
                    "source_away_since": None if away is None else round(time.time() - away, 1),
                    "source_reopen_attempts": cap.reopen_attempts, "capture_stuck": cap.overdue_s > 0,
                    "clip_encoding": "down" if st.clips.encoding_error else "ok",
                    "spool_disk": "full" if spool.disk_full else "ok",
                    "config_reload": self._last_reload}

    def _watch(self, st: Any) -> None:
        """Each tick: WATCHDOG=1 unless the capture thread is stuck (past the bound of what it is doing), and
        the source's gauges. A camera away and being retried keeps the agent up: it is not a hang."""
        cap = st.capture
        stuck = cap.overdue_s > 0
        if stuck != self._stuck:
            self._stuck = stuck
            if stuck:
                log.error("capture stuck %s source=%s: %.0f s past every timeout it has (source.open_timeout_s, "
                          "stall_s, back-off); systemd's watchdog is no longer fed and restarts the service",
                          cap.doing, cap.describe or self.cfg.source.kind, cap.overdue_s + const.CAPTURE_SLACK_S)
            else:
                log.warning("capture moving again: the watchdog is fed")
        if not stuck:
            self.notifier.watchdog()
        self.metrics.source_up.set(int(cap.state == "up"))
        self.metrics.source_away_seconds.set(round(cap.away_s or 0.0, 1))

    def _loop(self) -> int:
        ready = False
        last_frames = 0
        last_tick = time.monotonic()
        interval = min(TICK_S, (self.notifier.watchdog_interval_s() or 2 * TICK_S) / 2)
        failures = self.pipeline.failures
        wakeup = self._wakeup or Wakeup()
        # a failed stage or a finished file source is acted on at once, not at the next tick
        wakeup.after("failure", failures.event.wait)
        wakeup.after("source end", self.pipeline.wait)
        while not self._stop.is_set():
            wakeup.wait(interval)
            if failures.failure is not None:
                f = failures.failure
                log.error("stopping: the %s stage failed: %s (exit %d)", f.stage, f.reason, f.exit_code)
                return f.exit_code
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self._reload_from_file()
            st = self.pipeline.status()
            if not ready and (self.pipeline.ready.is_set() or st.capture.state == "away"):
                # a camera missing at boot is retried in the process like one lost later: the agent is up,
                # delivers what is queued, and STATUS=, /healthz and the log say the camera is away
                ready = True
                self.notifier.ready()
                log.info("ready: %s", "frames are flowing" if self.pipeline.ready.is_set()
                         else "the camera is away and retried in the background (source=away in STATUS and /healthz)")
            now = time.monotonic()
            frames = st.capture.frames
            fps = (frames - last_frames) / (now - last_tick) if now > last_tick else 0.0
            self._watch(st)
            last_frames, last_tick = frames, now
            away = st.capture.away_s
            self.notifier.status(
                f"fps={fps:.1f} queued={self.spool.status().clips} dropped={st.decode.dropped}"
                + (f" source=away({away:.0f}s)" if away is not None else "")
                + (f" source_error={st.capture.source_error}" if st.capture.source_error else "")
                + (" clip_encoding=down" if st.clips.encoding_error else ""))
            self.fps = round(fps, 2)
            self.metrics.fps.set(self.fps)
            self._clock()
            if self.pipeline.wait(0):
                log.info("source finished (file source without loop): stopping")
                break
        return const.EXIT_OK

    def _queued(self) -> int:
        """Reads left in the spool once every part has stopped, read from its files."""
        from edge_agent.delivery.spool import Spool, SpoolError

        try:
            reader = Spool.open_reader(self.cfg.spool)
        except (SpoolError, OSError):
            return 0
        try:
            return reader.status().clips
        finally:
            reader.close()

    def shutdown(self) -> bool:
        """Parts stop in the reverse of the order they were built: the watcher and HTTP first, then
        capture (open recordings are cut short and spooled, not lost), the uploader, the spool. False when
        the pipeline's stages did not all finish in the budget: the videos they held are lost (their reads,
        committed at detection, go out CID-only), and the stop says so (exit 70) rather than claim success."""
        self.notifier.stopping()
        self.agent.close(STOP_BUDGET_S)
        n = self._queued()
        when = "at the next start" if self.cfg.upload.url else "once upload.url is set"
        pipeline = getattr(self, "pipeline", None)  # none if the start failed before it was built
        if pipeline is not None and not pipeline.drained:
            log.error("stop incomplete: clips still being made after %.0f s lost their video (their reads are "
                      "queued and sent CID-only); %d clip%s queued (exit %d)", STOP_BUDGET_S, n, "" if n == 1 else "s",
                      const.EXIT_SOFTWARE)
            return False
        log.info("stopped queued=%d%s", n, f": {n} clip{'s' if n > 1 else ''} queued; "
                 f"{'it is' if n == 1 else 'they are'} sent {when}" if n else "")
        return True
