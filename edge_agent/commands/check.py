"""`edge-agent check`: is this device ready? One PASS/FAIL/SKIP line per part (config, libraries,
camera, QR decoding, spool, server, token, web password), with a hint a field technician can act on for each
failure, and exit 1 when anything failed.

The source is sampled and measured in check_source.py; decoding and QR search run here afterwards
on the packets it kept. Every step has a deadline: a camera that never answers is a FAIL line, not
a hung terminal.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from edge_agent import __version__
from edge_agent.commands.check_result import FAIL, PASS, SKIP, WARN, Result
from edge_agent.commands.check_source import DETECT_FRAMES, SourceSample, check_source, sample_source
from edge_agent.commands.check_source import source_hint as source_hint  # commands/snapshot.py uses it from here
from edge_agent.commands.check_spool import check_spool
from edge_agent.commands.common import add_config_arg, config_path, load_config_or_exit, stop_on_signals
from edge_agent.commands.ownership import act_as_state_owner
from edge_agent.config import Config
from edge_agent.delivery import contract
from edge_agent.logs import setup_logging
from edge_agent.redact import redact, redact_data

if TYPE_CHECKING:
    from edge_agent.app import Agent
from edge_agent.service.instances import clash_warning

DEFAULT_FRAMES = 90  # 3 s at 30 fps: enough for a stable rate and a keyframe interval of 1 s
DEFAULT_SECONDS = 10.0
# What the zbar stage of the detector's cascade reads that zxing-cpp alone does not, measured by
# `edge-agent replay sample_media/hard_codes_720p30.mp4` with and without libzbar0.
ZBAR_COST = "16 CIDs read and 3 no-reads without it, 18 and 1 with it"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="check the camera, QR decoding, spool and server; PASS/FAIL lines with hints",
        description="Open the configured source and measure its real frame rate, decode QR codes on a few "
        "frames, check the spool is writable and the server answers. Exit 1 if anything fails. "
        "Run as root on the service's spool, it checks as the spool's owner (the service's user).")
    add_config_arg(p)
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, metavar="N",
                   help=f"frames to read from the source (default {DEFAULT_FRAMES})")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, metavar="S",
                   help=f"give up reading the source after S seconds (default {DEFAULT_SECONDS:g})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)


# --- config and libraries ------------------------------------------------------------------------


def check_config(cfg: Config, path: str | None) -> Result:
    where = path or "built-in defaults"
    # the name the clips carry (an empty device_id is the host name, as the agent sends it)
    named = " (the host name)" if cfg.device_id == socket.gethostname() else ""
    return Result("config", PASS, f"{where}: valid; device_id={cfg.device_id}{named} source.kind={cfg.source.kind}")


def check_libraries(cfg: Config) -> Result:
    """PyAV (FFmpeg) reads every source; the QR library is what detector.decoder asks for."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import av
    except ImportError as exc:
        return Result("libraries", FAIL, f"PyAV cannot be imported: {exc}",
                      "reinstall edge-agent into its venv: /opt/edge-agent/venv/bin/pip install av")
    from edge_agent.pipeline.qr_detector import DecoderUnavailable, decoder_error, make_decoder

    try:
        name, _ = make_decoder(cfg.detector.decoder)
    except DecoderUnavailable as exc:
        return Result("libraries", FAIL, str(exc),
                      "install a QR library: pip install zxing-cpp (detector.decoder: zxing), "
                      "or apt-get install libzbar0 (detector.decoder: zbar)")
    dist = {"zxing": "zxing-cpp", "zbar": "pyzbar"}[name]
    try:
        qr_version = version(dist)
    except PackageNotFoundError:
        qr_version = "?"
    ffmpeg = getattr(av, "ffmpeg_version_info", "?")
    if name == "zxing" and (zbar := decoder_error("zbar")) is not None:
        return Result("libraries", WARN, f"PyAV {av.__version__}, {dist} {qr_version}, but no zbar ({zbar}): the "
                      "cascade's zbar stage is off, so damaged and glare-struck labels go unread (on "
                      f"sample_media/hard_codes_720p30.mp4: {ZBAR_COST})", "install libzbar0: sudo apt-get install "
                      "libzbar0, then restart the service", {"av": av.__version__, "decoder": name, "zbar": zbar})
    return Result("libraries", PASS, f"PyAV {av.__version__} (FFmpeg {ffmpeg}), QR decoder {dist} {qr_version}",
                  data={"av": av.__version__, "ffmpeg": ffmpeg, "decoder": name, "decoder_version": qr_version})


# --- QR decoding ---------------------------------------------------------------------------------


def check_detector(agent: Agent, sample: SourceSample) -> Result:
    """Decode the kept packets (or take the camera's own pictures, as the daemon does), search a spread
    of them for QR codes with the daemon's own detector and CID rule, time both."""
    import av

    from edge_agent.capture.media import GrayFrame, luma, open_decoder, to_av_packet
    from edge_agent.pipeline.qr_detector import DecoderUnavailable

    try:
        det = agent.detector()
    except DecoderUnavailable as exc:
        return Result("detector", SKIP, str(exc), "see the libraries line")
    if sample.info is None or sample.count == 0:
        return Result("detector", SKIP, f"{det.name} loads; no frames to try it on (see the source line)")
    frames: list[GrayFrame] = []
    info = sample.info
    if sample.pictures:  # the camera's lores stream: what the daemon's detector reads, no decode
        n = len(sample.pictures)
        wanted = {round(i * (n - 1) / max(1, DETECT_FRAMES - 1)) for i in range(min(n, DETECT_FRAMES))}
        frames = [sample.pictures[i] for i in sorted(wanted)]
        return _search(det, agent, frames, f"lores {frames[0].gray.shape[1]}x{frames[0].gray.shape[0]} "
                       "from the camera, no video decode", {})
    if not sample.kept:
        return Result("detector", SKIP, f"no keyframe in {sample.count} frames: nothing decodable",
                      "set the camera's keyframe (I-frame) interval to 1 s, or read longer with --seconds")
    dec = open_decoder(info)
    n = len(sample.kept)
    wanted = {round(i * (n - 1) / max(1, DETECT_FRAMES - 1)) for i in range(min(n, DETECT_FRAMES))}
    decoded = errors = 0
    decode_s = 0.0
    for pkt in [*sample.kept, None]:
        started = time.perf_counter()
        try:
            out = dec.decode(to_av_packet(pkt, info.time_base) if pkt is not None else None)
        except av.error.FFmpegError:
            errors += 1
            continue
        finally:
            decode_s += time.perf_counter() - started
        for f in out:
            if decoded in wanted:
                t = pkt.t if pkt is not None else sample.kept[-1].t  # approximate: frames lag packets
                frames.append(GrayFrame(luma(f).copy(), t, 0.0))
            decoded += 1
    if not frames:
        return Result("detector", FAIL, f"{info.codec}: none of {n} frames could be decoded ({errors} errors)",
                      "the stream is not what source.input_format says, or it is corrupt: check the camera's "
                      "codec setting and source.input_format")
    video_ms = decode_s * 1000 / max(1, decoded)
    return _search(det, agent, frames, f"video decode {video_ms:.1f} ms a frame",
                   {"video_decode_ms": round(video_ms, 2)})


def _search(det: Any, agent: Agent, frames: list[Any], where: str, extra: dict[str, Any]) -> Result:
    """The daemon's detector and CID rule on `frames`, timed: the detector line."""
    from edge_agent.delivery.cid import escape_payload, payload_text

    qr_ms: list[float] = []
    found: dict[bytes, bool] = {}
    validator = agent.validator()
    for f in frames:
        for d in det.detect(f):
            found[d.payload] = validator.from_payload(d.payload) is not None
        qr_ms.append(det.last_ms)
    qr_ms.sort()
    median = qr_ms[len(qr_ms) // 2]
    detail = (f"{det.name}: {len(frames)} frames searched, {median:.1f} ms a frame (max {qr_ms[-1]:.1f}); "
              f"{where}")
    if found:
        shown = [f"{escape_payload(p)}{'' if ok else ' (rejected: not a CID per detector.cid_pattern)'}"
                 for p, ok in list(found.items())[:3]]
        detail += "; found " + ", ".join(shown)
    else:
        detail += "; no QR code in view (hold a label in front of the camera to test reading)"
    data = {"decoder": det.name, "frames": len(frames), "qr_ms_median": round(median, 2),
            "qr_ms_max": round(qr_ms[-1], 2), **extra,
            "codes": [payload_text(p) for p in found],
            "cids": [payload_text(p) for p, ok in found.items() if ok]}
    return Result("detector", PASS, detail, data=data)


# --- spool, server, token ------------------------------------------------------------------------


def check_server(cfg: Config) -> Result:
    """Prove the upload endpoint, not just the host: POST upload.url an empty form, which the `/cid`
    contract must refuse (400/422, nothing stored). A 404 or 405 means the path is wrong, a 3xx that
    upload.url is not the final URL (the uploader never follows redirects), 401/403 the token."""
    import requests

    from edge_agent.delivery.credentials import CredentialError, load_token, tls_options
    from edge_agent.delivery.errors import describe_error

    u = cfg.upload
    if not u.url:
        return Result("server", SKIP, "upload.url is not set: clips stay in the spool")
    parts = urlsplit(u.url)
    host = parts.hostname or parts.netloc
    netloc = urlsplit(redact(u.url)).netloc  # for messages: a login in the URL is masked
    try:
        verify, cert = tls_options(u)
    except CredentialError as exc:
        return Result("server", FAIL, str(exc), exc.fix or "make upload.key_file private to the service user (0600)")
    headers = {"User-Agent": f"edge-agent/{__version__} check"}
    try:
        token = load_token(u)
    except CredentialError:
        token = None  # the token line says why
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.monotonic()
    try:
        r = requests.post(u.url, files={"probe": ("", b"")}, data={}, headers=headers, verify=verify, cert=cert,
                          timeout=(u.connect_timeout_s, min(u.read_timeout_s, 10.0)), allow_redirects=False)
    except requests.exceptions.SSLError as exc:
        return Result("server", FAIL, f"{netloc}: {describe_error(exc, u.url)}",
                      "the server's certificate is not trusted: set upload.ca_file to the CA that signed it "
                      "(and check the device's clock: `timedatectl`)")
    except requests.exceptions.ConnectTimeout:
        return Result("server", FAIL, f"{netloc}: no answer to connect in {u.connect_timeout_s:g} s",
                      "a firewall drops the traffic or the server is down: check the network route and the port")
    except requests.exceptions.ReadTimeout:
        return Result("server", FAIL, f"{netloc}: connected but no HTTP reply",
                      "something listens but does not speak HTTP: check the port in upload.url")
    except requests.exceptions.ConnectionError as exc:
        why = describe_error(exc, u.url)
        low = why.lower()
        if "name resolution" in low or "not known" in low or "nodename" in low or "resolve" in low:
            hint = f"the host name {host} does not resolve: check upload.url and the device's DNS"
        elif "refused" in low:
            hint = (f"nothing listens on {netloc}: is the edge server running, "
                    "and is the port in upload.url right?")
        else:
            hint = "the server does not answer: check upload.url, the network and the firewall"
        return Result("server", FAIL, f"{netloc}: {why}", hint)
    except (requests.RequestException, OSError) as exc:  # e.g. a missing ca_file / cert_file
        return Result("server", FAIL, f"{netloc}: {describe_error(exc, u.url)}",
                      "check upload.url and the upload.ca_file / cert_file / key_file paths")
    ms = (time.monotonic() - started) * 1000
    code = r.status_code
    data = {"status_code": code, "ms": round(ms, 1)}
    said = f"POST {u.url} with an empty form: HTTP {code}"
    if code in (400, 422):
        return Result("server", PASS, f"{said} ({ms:.0f} ms): the endpoint is there and checks what it gets",
                      data=data)
    if 300 <= code < 400:
        where = urljoin(u.url, r.headers.get("Location", ""))
        return Result("server", FAIL, f"{said}, a redirect to {where}",
                      f"uploads never follow redirects: set upload.url to {where}", data)
    if code in (404, 405):
        return Result("server", FAIL, f"{said}: no upload endpoint at {parts.path or '/'}",
                      f"upload.url must be the edge server's {contract.CID_PATH} endpoint, e.g. "
                      f"{parts.scheme}://{netloc}{contract.CID_PATH}", data)
    if code in (401, 403):
        hint = ("the server refused the token: check the token in upload.token_file (or the systemd credential)"
                if token else "the server wants a token: set upload.token_file (see README, 'Install on a device')")
        return Result("server", FAIL, said, hint, data)
    if 200 <= code < 300:
        return Result("server", FAIL, f"{said}: it accepted a request with no cid",
                      f"this is not an edge server's {contract.CID_PATH} endpoint: check the path in upload.url",
                      data)
    if code >= 500:
        return Result("server", FAIL, f"{said}: the server has a problem",
                      "look at the edge server's logs; clips wait in the spool meanwhile", data)
    return Result("server", FAIL, said, f"unexpected answer: check that upload.url is the edge server's "
                  f"{contract.CID_PATH} endpoint", data)


def check_token(cfg: Config) -> Result:
    from edge_agent.delivery.credentials import CredentialError, load_token, token_path

    if not cfg.upload.url:
        return Result("token", SKIP, "no upload.url")
    path = token_path(cfg.upload)
    if path is None:
        return Result("token", SKIP, "no bearer token configured (upload.token_file unset, no upload-token credential)")
    try:
        load_token(cfg.upload)
    except CredentialError as exc:
        return Result("token", FAIL, str(exc),
                      exc.fix or "put the token on one line in the file, private to the service user (0600) "
                      "(or use LoadCredential=upload-token:/etc/edge-agent/upload-token in the unit)")
    return Result("token", PASS, f"read from {path} (content not shown)")


def check_web(cfg: Config) -> Result | None:
    """The web server's password and exposure, as `run` would refuse them (exit 78); None when there is
    no web server and no password to check."""
    from edge_agent.delivery.credentials import CredentialError
    from edge_agent.service.http import ExposureRefused, access_for

    h = cfg.http
    if not h.port and not h.password_file:
        return None
    try:
        access = access_for(h)
    except CredentialError as exc:
        return Result("web", FAIL, str(exc), exc.fix or "put the password on one line in http.password_file, "
                      "private to the service user (0600), or use the systemd credential http-password")
    except ExposureRefused as exc:
        return Result("web", FAIL, str(exc), "`edge-agent run` would refuse to start (exit 78)")
    where = f"{h.host}:{h.port}" if h.port else "(http.port not set: no web server)"
    return Result("web", PASS, f"{where}: " + ("password-protected (content not shown)" if access.password
                                               else "open, on loopback only"))


# --- command -------------------------------------------------------------------------------------


def run_checks(cfg: Config, path: str | None, frames: int = DEFAULT_FRAMES,
               seconds: float = DEFAULT_SECONDS, stop: threading.Event | None = None) -> list[Result]:
    libs = check_libraries(cfg)
    results = [check_config(cfg, path), libs]
    if libs.status == FAIL and "PyAV" in libs.detail:
        results.append(Result("source", SKIP, "PyAV is missing", "see the libraries line"))
    else:
        from edge_agent.app import Agent
        from edge_agent.capture.encoders import none_usable

        if (no_encoder := none_usable(cfg.clip.encoders)) is not None:  # what `config validate` warns, too
            results.append(Result("encoders", "WARN", no_encoder, "list an encoder this device has in clip.encoders"))

        agent = Agent(cfg)
        sample = sample_source(agent, frames, seconds, stop)
        results += [check_source(cfg, sample, seconds), check_detector(agent, sample)]
        sample.kept.clear()
    results += [check_spool(cfg), check_server(cfg), check_token(cfg)]
    if (web := check_web(cfg)) is not None:
        results.append(web)
    if (shared := clash_warning(path)) is not None:  # several cameras on one device: edge-agent@.service
        results.append(Result("instances", WARN, *shared))
    return results


def format_table(results: list[Result]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.status:<4}  {r.name:<9} {r.detail}")
        if r.hint and r.status != PASS:
            lines.append(f"{'':16}-> {r.hint}")
    failed = sum(r.status == FAIL for r in results)
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP, WARN)}
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped"
                 + (f", {counts[WARN]} warned" if counts[WARN] else "")
                 + (": fix the FAIL lines, then run `edge-agent check` again" if failed else ""))
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args)
    from edge_agent.pipeline.noreads import noreads_dir

    # root checks what the service's user can do (camera groups, spool, token), and writes nothing as root
    act_as_state_owner("check", [cfg.spool.dir, noreads_dir(cfg)], refuse=False)
    setup_logging("ERROR")  # the table is the output; library chatter would bury it
    stop = stop_on_signals()  # the source reading ends, the other checks run, the table says so
    results = run_checks(cfg, config_path(args), max(2, args.frames), max(0.5, args.seconds), stop)
    ok = not any(r.status == FAIL for r in results)
    if args.json:  # redacted: results quote the source and the upload URL, logins and all
        print(json.dumps(redact_data({"ok": ok, "results": [asdict(r) for r in results]}), indent=2, default=str))
    else:
        print(redact(format_table(results)))
    sys.stdout.flush()
    return 0 if ok else 1
