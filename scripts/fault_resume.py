"""Resume times after a broker or API restart, and a hostile-reply soak (issue 12).

Used by scripts/fault_stress.py (`--broker-restarts N`, `--api-restarts N`, `--hostile-minutes M`);
everything is real and on 127.0.0.1. Figures are printed, never asserted as wall-clock limits.

Broker: detections flow; the broker is stopped (SIGTERM or kill -9, alternately) for `down_s`, then
started on the same port. Resume = first detections message received after the broker accepts
connections again. The measuring subscriber is paho with a 50-100 ms reconnect delay, so the
figure is the daemon's (plus at most ~0.1 s).
API: inference is stopped for `down_s` (the server process's socket closes: connection refused),
then started again; resume = first inference request the server receives after it listens again.
Hostile: a scripted HTTP server answers each upload with a random mix of the issue's hostile replies
and good ones; RSS (VmHWM), liveness, schema validity of every payload and the accounting identity
are checked at the end.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpfault
import paho.mqtt.client as mqtt
from daemon_infra import daemon_command, daemon_config
from procs import ChildProcess, wait_until

from focoos_edge.delivery import contract


@dataclass
class Resume:
    """Seconds from "the peer is back" to "traffic flows again", one per restart."""

    what: str
    seconds: list[float] = field(default_factory=list)

    def line(self) -> str:
        s = sorted(self.seconds)
        if not s:
            return f"{self.what}: no restarts"
        return (f"{self.what}: {len(s)} restarts, resume p50 {statistics.median(s):.2f} s, "
                f"p90 {s[int(0.9 * (len(s) - 1))]:.2f} s, max {s[-1]:.2f} s, min {s[0]:.2f} s")


class FastSubscriber:
    """A paho subscriber that reconnects every 50-100 ms and notes when each detection arrived."""

    def __init__(self, port: int, topic: str):
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"resume-{random.randrange(1 << 30)}")
        self._client.reconnect_delay_set(0.05, 0.1)  # type: ignore[arg-type]
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=0)
        self._client.on_message = self._on_message
        self._client.connect_async("127.0.0.1", port, 10)
        self._client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.arrivals.append(time.monotonic())

    def first_after(self, t: float) -> float | None:
        with self._lock:
            return next((a for a in self.arrivals if a > t), None)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def broker_restarts(rig, n: int, down_s: float, rng: random.Random, note=lambda text: None) -> Resume:
    """`n` broker stops (alternately SIGTERM and kill -9) of `down_s` each; the daemon keeps running."""
    result = Resume("broker restart -> detections flow")
    rig.inference_up()
    daemon = rig.start_daemon()
    sub = FastSubscriber(rig.broker.port, "focoos/+/+/detections")
    try:
        wait_until(lambda: sub.first_after(0.0), 60, watch=[daemon], message="first detection")
        for i in range(n):
            (rig.broker.terminate if i % 2 == 0 else rig.broker.kill)()
            time.sleep(down_s * rng.uniform(0.8, 1.2))
            rig.broker.start()
            back = time.monotonic()
            first = wait_until(lambda back=back: sub.first_after(back), 60, interval_s=0.01, watch=[daemon],
                               message="detections after the broker restart")
            result.seconds.append(first - back)
            note(f"broker restart {i + 1}/{n}: resumed after {first - back:.2f} s")
        rig.stop_daemon(daemon)
    finally:
        sub.close()
    return result


def api_restarts(rig, n: int, down_s: float, rng: random.Random, note=lambda text: None) -> Resume:
    """`n` inference outages of `down_s`; resume = first request after the server listens again."""
    result = Resume("API restart -> first upload")
    rig.inference_up()
    daemon = rig.start_daemon()
    server = rig.inference
    wait_until(lambda: server.stats.inferences > 0, 60, watch=[daemon], message="first inference")
    for i in range(n):
        rig.inference_down()
        time.sleep(down_s * rng.uniform(0.8, 1.2))
        before = server.stats.requests
        rig.inference_up()
        back = time.monotonic()
        wait_until(lambda before=before: server.stats.requests > before, 60, interval_s=0.005, watch=[daemon],
                   message="an upload after the API came back")
        result.seconds.append(time.monotonic() - back)
        note(f"API restart {i + 1}/{n}: first request after {result.seconds[-1]:.2f} s")
        time.sleep(1.0)
    rig.stop_daemon(daemon)
    return result


# -- hostile soak ---------------------------------------------------------------------------------
def _reply(*dets: dict) -> httpfault.Behaviour:
    body = json.dumps({"detections": list(dets)}, separators=(",", ":")).encode()
    return httpfault.raw(200, body, "application/json")


def _det(**kw) -> dict:
    return {"bbox": [10, 20, 110, 220], "conf": 0.9, "cls_id": 0, "label": "person", **kw}


HOSTILE_MIX: list[tuple[str, httpfault.Behaviour]] = [
    ("ok", _reply(_det())),
    ("lone_surrogate", _reply(_det(label="a\ud800b"))),
    ("label_70k", _reply(_det(label="x" * 70_000))),
    ("conf_1e308", _reply(_det(conf=1e308))),
    ("detections_158k", _reply(*[{"bbox": [1, 1, 2, 2], "conf": 0.9, "label": "car"}] * 158_273)),
    ("schema_breakers", _reply(_det(conf=7.5, bbox=[300, 300, 10, 10], cls_id=10 ** 300), _det(cls_id=-4))),
    ("invented_labels", _reply(*[_det(label=f"l{random.randrange(10**9)}") for _ in range(50)])),
    ("redirect", httpfault.raw(302, b"", headers={"Location": "http://127.0.0.1:9/"})),
    ("captive_portal", httpfault.raw(200, b"<html>log in</html>", "text/html")),
    ("retry_after_1e12", httpfault.json(429, {"detail": "slow"}, headers={"Retry-After": "1e12"})),
    ("retry_after_9999", httpfault.json(429, {"detail": "slow"},
                                        headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})),
    ("trickled_headers", httpfault.trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"y", 0.1)),
    ("rejected_422", httpfault.json(422, {"detail": "bad image"})),
    ("reset", httpfault.reset()),
]
MODEL = httpfault.json(200, {"ref": "local-aruco", "name": "m", "task": "detection", "status": "DEPLOYED",
                             "classes": ["person"], "im_size": 640})


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


@dataclass
class HostileReport:
    seconds: float = 0.0
    served: Counter = field(default_factory=Counter)
    peak_rss: int = 0
    payloads_checked: int = 0
    final: dict | None = None

    def line(self) -> str:
        cam = (self.final or {}).get("cameras", {}).get("cam", {})
        return (f"hostile soak: {self.seconds:.0f} s, {sum(self.served.values())} replies "
                f"({len(self.served)} kinds), peak RSS {self.peak_rss / 2**20:.0f} MiB, "
                f"{self.payloads_checked} payloads valid, produced {cam.get('produced')} = delivered "
                f"{cam.get('delivered')} + pending {cam.get('pending')} + evicted {cam.get('evicted')} + "
                f"dead-lettered {cam.get('dead_lettered')} {cam.get('dead_lettered_by_reason')}, "
                f"thread restarts {(self.final or {}).get('thread_restarts', {})}")


def hostile_soak(rig, minutes: float, work_dir: Path, spawn, rng: random.Random,
                 note=lambda text: None) -> HostileReport:
    report = HostileReport()
    with httpfault.FaultServer() as server:
        def behave(h) -> None:
            if h.command == "GET":
                return MODEL(h)
            label, behaviour = rng.choice(HOSTILE_MIX)
            report.served[label] += 1
            return behaviour(h)

        server.default = behave
        config = daemon_config(work_dir, api_url=server.url, mqtt_port=rig.broker.port, device_id="box1",
                               inference={"timeout_s": 2, "retry_after_max_s": 5},
                               cameras=[{"name": "cam", "source": f"file://{rig.clip}", "sample_fps": 4,
                                         "snapshot": {"min_interval_s": 0}}])
        daemon: ChildProcess = spawn(daemon_command(config), name="daemon-hostile")
        started = time.monotonic()
        while time.monotonic() - started < minutes * 60:
            if not daemon.alive:
                raise AssertionError(f"daemon died\n{daemon.describe()}")
            report.peak_rss = max(report.peak_rss, _vm_hwm(daemon.pid))
            time.sleep(1.0)
            note(f"hostile: {time.monotonic() - started:.0f} s, served {sum(report.served.values())}")
        report.seconds = time.monotonic() - started
        report.final = rig.stop_daemon(daemon)  # exit 0, `offline`, accounting identity
    for m in rig.sub.messages("focoos/#"):
        kind = contract.classify_topic(m.topic, "focoos")
        if kind is not None and kind.schema is not None and m.payload_bytes:
            contract.validate_payload(kind.schema, m.payload_bytes)
            report.payloads_checked += 1
    return report
