#!/usr/bin/env python3
"""Watch a focoos-edge deployment: validate every payload against the published schemas and print
a live table per camera (detections/s, counts by label, latency p50, replayed share, invalid payloads).

Run it with the project's venv (it needs paho-mqtt and jsonschema):

    .venv/bin/python scripts/mqtt_monitor.py --host 127.0.0.1 --port 1883 --prefix focoos
    .venv/bin/python scripts/mqtt_monitor.py --share monitors      # MQTT 5 shared subscription
    .venv/bin/python scripts/mqtt_monitor.py --seconds 10 --fail-on-invalid   # a CI check

The password, when the broker needs one, comes from the MQTT_PASSWORD environment variable (never
the command line, which other users can read). With --share, the subscription is
`$share/GROUP/{prefix}/#`: several monitors split the messages, and retained messages (states,
counts, snapshots) are not delivered, so the table fills as they change.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from focoos_edge.delivery import contract
from focoos_edge.delivery.contract import ContractError, TopicKind

log = logging.getLogger("mqtt_monitor")
RATE_WINDOW_S = 10.0
SAMPLES = 200  # latency / replayed figures over the last SAMPLES detections messages
RECENT_FRAMES = 10_000  # frame ids remembered per camera for de-duplication


@dataclass
class CameraView:
    """What the monitor knows of one camera of one box."""

    state: str = "?"
    arrivals: deque = field(default_factory=deque)  # monotonic receive times, last RATE_WINDOW_S
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=SAMPLES))
    replayed: deque = field(default_factory=lambda: deque(maxlen=SAMPLES))
    counts: dict = field(default_factory=dict)  # label level -> count (count topics)
    last_labels: dict = field(default_factory=dict)  # label -> count in the last detections message
    frames: set = field(default_factory=set)  # recent frame ids: duplicates are counted, not folded twice
    frame_order: deque = field(default_factory=deque)
    duplicates: int = 0
    snapshots: int = 0
    invalid: int = 0


class Monitor:
    """Message bookkeeping, independent of MQTT so it can be fed from anywhere."""

    def __init__(self, prefix: str, max_errors: int = 5):
        self.prefix = prefix
        self.cameras: dict[tuple[str, str], CameraView] = {}
        self.devices: dict[str, dict[str, str]] = {}  # device -> {"availability": .., "inference": ..}
        self.invalid = 0
        self.messages = 0
        self.errors: deque[str] = deque(maxlen=max_errors)

    def camera(self, device: str, camera: str) -> CameraView:
        return self.cameras.setdefault((device, camera), CameraView())

    def on_message(self, topic: str, payload: bytes, now_mono: float) -> None:
        """Validate one message and fold it into the table."""
        kind = contract.classify_topic(topic, self.prefix)
        if kind is None:
            return
        self.messages += 1
        try:
            instance = self._check(kind, payload)
        except ContractError as exc:
            self.invalid += 1
            if kind.camera:
                self.camera(kind.device_id, kind.camera).invalid += 1
            self.errors.append(f"{topic}: {exc}")
            return
        self._fold(kind, instance, now_mono)

    @staticmethod
    def _check(kind: TopicKind, payload: bytes) -> object:
        if kind.schema is None:  # the snapshot: JPEG bytes
            if not payload.startswith(contract.JPEG_MAGIC):
                raise ContractError("snapshot", ["(payload): not a JPEG"])
            return payload
        return contract.validate_payload(kind.schema, payload)

    def _fold(self, kind: TopicKind, value, now_mono: float) -> None:
        if kind.camera is None:
            self.devices.setdefault(kind.device_id, {})[kind.kind] = \
                value if isinstance(value, str) else value.get("state", "")
            return
        view = self.camera(kind.device_id, kind.camera)
        if kind.kind == "detections":
            if value["frame_id"] in view.frames:
                view.duplicates += 1
                return
            view.frames.add(value["frame_id"])
            view.frame_order.append(value["frame_id"])
            if len(view.frame_order) > RECENT_FRAMES:
                view.frames.discard(view.frame_order.popleft())
            view.arrivals.append(now_mono)
            view.latencies_ms.append(value["latency_ms"]["total"])
            view.replayed.append(value["replayed"])
            labels: dict[str, int] = {}
            for d in value["detections"]:
                name = d["label"] or f"class {d['cls_id']}"
                labels[name] = labels.get(name, 0) + 1
            view.last_labels = labels
        elif kind.kind == "state":
            view.state = value["state"]
        elif kind.kind == "snapshot":
            view.snapshots += 1
        elif kind.kind == "count":
            view.counts[kind.label] = value

    def render(self, now_mono: float) -> str:
        """The table, one line per camera, then device states and the latest invalid payloads."""
        head = f"{'device/camera':<32} {'state':<12} {'det/s':>6} {'p50 ms':>8} {'replayed':>8} " \
               f"{'dup':>4} {'snap':>4} {'bad':>4}  counts"
        lines = [head, "-" * len(head)]
        for (device, camera), v in sorted(self.cameras.items()):
            while v.arrivals and now_mono - v.arrivals[0] > RATE_WINDOW_S:
                v.arrivals.popleft()
            rate = len(v.arrivals) / RATE_WINDOW_S
            lat = sorted(v.latencies_ms)
            p50 = f"{lat[len(lat) // 2]:.0f}" if lat else "-"
            replayed = f"{100 * sum(v.replayed) / len(v.replayed):.0f}%" if v.replayed else "-"
            counts = v.counts or v.last_labels
            shown = " ".join(f"{k}={n}" for k, n in sorted(counts.items()) if n) or "-"
            lines.append(f"{device + '/' + camera:<32} {v.state:<12} {rate:>6.1f} {p50:>8} {replayed:>8} "
                         f"{v.duplicates:>4} {v.snapshots:>4} {v.invalid:>4}  {shown}")
        for device, states in sorted(self.devices.items()):
            lines.append(f"{device}: availability {states.get('availability', '?')}, "
                         f"inference {states.get('inference', '?')}")
        lines.append(f"{self.messages} messages, {self.invalid} invalid")
        lines += [f"  invalid: {e}" for e in self.errors]
        return "\n".join(lines)


def make_client(args: argparse.Namespace, monitor: Monitor, lock: threading.Lock) -> mqtt.Client:
    """A paho client subscribed to the whole prefix (shared subscription with --share)."""
    protocol = mqtt.MQTTv5 if args.share else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
    topic = f"{args.prefix}/#" if not args.share else f"$share/{args.share}/{args.prefix}/#"
    if args.username:
        client.username_pw_set(args.username, os.environ.get("MQTT_PASSWORD"))
    if args.tls_ca or args.port == 8883:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        client.tls_set_context(ctx)

    def on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
        else:
            c.subscribe(topic, qos=1)

    def on_message(c, userdata, msg):
        with lock:
            monitor.on_message(msg.topic, msg.payload, time.monotonic())

    client.on_connect = on_connect
    client.on_message = on_message
    return client


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default="focoos", help="mqtt.topic_prefix of the boxes")
    p.add_argument("--username", help="password from the MQTT_PASSWORD environment variable")
    p.add_argument("--tls-ca", help="CA file: connect with TLS (also used for port 8883)")
    p.add_argument("--share", metavar="GROUP", help="MQTT 5 shared subscription group")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between tables")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--fail-on-invalid", action="store_true", help="exit 1 if any payload was invalid")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    monitor, lock, stop = Monitor(args.prefix), threading.Lock(), threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = make_client(args, monitor, lock)
    client.connect_async(args.host, args.port, 30)
    client.loop_start()
    deadline = time.monotonic() + args.seconds if args.seconds else None
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    try:
        while not stop.wait(args.interval if deadline is None else
                             max(0.0, min(args.interval, deadline - time.monotonic()))):
            with lock:
                print(clear + monitor.render(time.monotonic()), flush=True)
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        print(monitor.render(time.monotonic()), flush=True)
        failed = args.fail_on_invalid and monitor.invalid > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
