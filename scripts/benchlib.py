"""Infrastructure of scripts/bench.py: media with frame numbers, a recording inference server, a
keyframe observer of the stream, and a runner for measured processes (the daemon, ffmpeg, loops).

Everything runs on 127.0.0.1 with free ports, through the test helpers in tests/ (real Mosquitto,
the GStreamer RTSP server serving a pre-encoded clip in real time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import media  # noqa: E402  (tests/ helpers)
from daemon_infra import daemon_config  # noqa: E402
from mqtt_infra import Mosquitto, MqttSubscriber  # noqa: E402
from procs import ChildProcess, free_port, wait_for_port  # noqa: E402
from rtsp_infra import RtspServer  # noqa: E402

from focoos_edge.tools.localserver import LocalServer  # noqa: E402
from focoos_edge.tools.upload import extract_form_file  # noqa: E402

FPS = 25
STRIP_X, STRIP_BLOCK, STRIP_H, BITS = 192, 128, 64, 12  # frame-number blocks, in 1080p pixels
API_KEY = "bench-key"
BENCH = str(REPO / "scripts" / "bench.py")


# -- media ------------------------------------------------------------------------------------------
def counter_strip(n: int) -> bytes:
    """Frame number `n` as 12 black/white blocks (grey, 1536x64)."""
    strip = np.full((STRIP_H, STRIP_BLOCK * BITS), 16, np.uint8)
    for bit in range(BITS):
        if n >> bit & 1:
            strip[:, bit * STRIP_BLOCK:(bit + 1) * STRIP_BLOCK] = 235
    return strip.tobytes()


def read_counter(img: np.ndarray) -> int:
    """The frame number drawn by counter_strip, from a frame of any size (BGR or grey)."""
    grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    s = grey.shape[1] / 1920
    y, n = int(STRIP_H / 2 * s), 0
    for bit in range(BITS):
        x = int((STRIP_X + STRIP_BLOCK * bit + STRIP_BLOCK / 2) * s)
        n |= int(grey[y - 2:y + 3, x - 2:x + 3].mean() > 128) << bit
    return n


def make_counter_clip(path: Path, seconds: int) -> Path:
    """testsrc2 1920x1080 at 25 fps with the frame number overlaid; x264, GOP 25, no B-frames."""
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.mp4")
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate={FPS}",
           "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{STRIP_BLOCK * BITS}x{STRIP_H}", "-r", str(FPS),
           "-i", "-", "-filter_complex", f"[0][1]overlay={STRIP_X}:0:shortest=1", "-t", str(seconds),
           "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", str(FPS), "-keyint_min", str(FPS),
           "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(tmp)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    try:
        for n in range(seconds * FPS):
            proc.stdin.write(counter_strip(n))
    except BrokenPipeError:
        pass  # ffmpeg died: its status says so
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit(f"ffmpeg failed to encode {path}")
    tmp.rename(path)
    return path


def cached(path: Path, make) -> Path:
    return path if path.exists() else make(path)


def clip_frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """Frames of a file by index (decoded by OpenCV)."""
    cap, out, n = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), {}, 0
    while indices - out.keys() and cap.grab():
        if n in indices:
            out[n] = cap.retrieve()[1]
        n += 1
    cap.release()
    return out


# -- measuring ---------------------------------------------------------------------------------------
class RecordingServer(LocalServer):
    """The local inference server, also noting when each upload arrived and which frame it shows."""

    def __init__(self, latency_s: float):
        super().__init__(port=0, latency_s=latency_s)
        self.uploads: list[tuple[float, int, int]] = []  # (wall time, JPEG bytes, frame number)
        self._rec_lock = threading.Lock()

    def _inference(self, ref, query, content_type, body):  # bench only: wraps a private hook
        now = time.time()
        try:
            jpeg = extract_form_file(content_type, body)
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
            with self._rec_lock:
                self.uploads.append((now, len(jpeg), read_counter(img)))
        except (ValueError, cv2.error):
            pass
        return super()._inference(ref, query, content_type, body)

    def since(self, t0: float) -> list[tuple[float, int, int]]:
        """Uploads received at or after wall time `t0`."""
        with self._rec_lock:
            return [u for u in self.uploads if u[0] >= t0]


class Observer(threading.Thread):
    """A keyframe-only reader of the same (shared) RTSP stream: it sees when the camera sends
    frame n, so every client's content age has one absolute reference."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        from focoos_edge.capture.keyframes import KeyframeSource
        self.stop = threading.Event()
        self.source = KeyframeSource(url, display="observer", stop=self.stop)
        self.points: list[tuple[float, int]] = []  # (wall time, frame number)

    def run(self) -> None:
        while not self.stop.is_set() and self.source.grab():
            self.points.append((time.time(), read_counter(self.source.retrieve_scaled(640).image)))

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        self.source.release()

    def ages_ms(self, uploads: list[tuple[float, int, int]], clip_frames_n: int) -> list[float]:
        """Age of each upload at receipt: its time minus when the camera sent its frame. The
        stream's start is the earliest (time - n / fps) the observer saw (frames of the first GOP
        come late, in a burst, which only raises that value, never lowers it); the observer's own
        transport and keyframe decode delay (a few ms) is thus left out of every age."""
        if not self.points:
            return []
        start = min(t - n / FPS for t, n in self.points)
        ages = []
        for t, _size, n in uploads:
            expected = (t - start) * FPS
            while n + clip_frames_n <= expected + FPS:  # the server looped the clip meanwhile
                n += clip_frames_n
            ages.append((t - (start + n / FPS)) * 1000)
        return ages


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Per thread: (name, CPU seconds)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = ((task / "comm").read_text().strip(),
                                   (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        except OSError:
            continue  # the thread ended
    return out


def side_by_side(procs: dict[str, ChildProcess], windows: int, window_s: float,
                 warmup_s: float) -> dict[str, list[float]]:
    """CPU per wall second of each process over the same consecutive windows (all running at
    once, so the machine's load hits them alike): a ratio of two of them is taken per window."""
    deadline = time.monotonic() + warmup_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        for proc in procs.values():
            if not proc.alive:
                raise SystemExit(proc.describe())
    cpu: dict[str, list[float]] = {name: [] for name in procs}
    for _ in range(windows):
        c0, t0 = {n: cpu_s(p.pid) for n, p in procs.items()}, time.monotonic()
        time.sleep(window_s)
        wall = time.monotonic() - t0
        for name, proc in procs.items():
            if not proc.alive:
                raise SystemExit(proc.describe())
            cpu[name].append((cpu_s(proc.pid) - c0[name]) / wall)
    return cpu


def ratios(cpu: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per window: num's CPU over den's."""
    return [a / b for a, b in zip(cpu[num], cpu[den], strict=True)]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank quantile; NaN when empty."""
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


@dataclass
class Run:
    """What one measured process did during the measurement window."""

    cpu_per_s: float
    rss: list[int] = field(default_factory=list)
    uploads: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    threads: list[tuple] = field(default_factory=list)  # (tid, name, CPU per s), busiest first


class Bench:
    """Media, a Mosquitto broker with a subscriber, and runners for measured processes."""

    def __init__(self, work_dir: Path, measure_s: float, warmup_s: float = 6.0):
        self.work, self.measure_s, self.warmup_s = work_dir, measure_s, warmup_s
        self.logs = work_dir / f"run-{int(time.time())}"
        clip_s = int(measure_s + warmup_s + 20)  # longer than a run: the server never loops it
        (work_dir / "media").mkdir(parents=True, exist_ok=True)
        self.clip = make_counter_clip(work_dir / "media" / f"counter-1080p-{clip_s}s.mp4", clip_s)
        self.clip_frames_n = clip_s * FPS
        self.small_clip = cached(work_dir / "media" / "testsrc-360p-20s.mp4",
                                 lambda p: media.make_test_clip(p, 640, 360, FPS, 20))
        self.static_clip = cached(work_dir / "media" / "static-1080p-20s.mp4",
                                  lambda p: media.make_marker_clip(p, 1920, 1080, FPS, 20,
                                                                   markers=[(7, 600, 300, 300)]))
        self.broker = Mosquitto(self.logs / "mqtt").start()
        self.sub = MqttSubscriber(self.broker.port, self.logs / "sub", topic="focoos/#").start()
        self._cameras = 0

    def close(self) -> None:
        self.sub.stop()
        self.broker.terminate()

    def camera(self, clip: Path) -> RtspServer:
        """A fresh RTSP server for `clip` (its clock starts with its first client)."""
        self._cameras += 1
        return RtspServer(self.logs / f"rtsp-{self._cameras}", clip=clip).start()

    def _window(self, proc: ChildProcess, warmup_s: float, measure_s: float,
                rss_every_s: float) -> tuple[float, Run]:
        deadline = time.monotonic() + warmup_s
        while time.monotonic() < deadline and proc.alive:
            time.sleep(0.2)
        if not proc.alive:
            raise SystemExit(proc.describe())
        t0_wall, t0, c0, th0, rss = time.time(), time.monotonic(), cpu_s(proc.pid), thread_cpu(proc.pid), []
        while time.monotonic() - t0 < measure_s and proc.alive:
            rss.append(proc.rss_bytes())
            time.sleep(rss_every_s)
        if not proc.alive:
            raise SystemExit(proc.describe())
        wall = time.monotonic() - t0
        cpu, th1 = (cpu_s(proc.pid) - c0) / wall, thread_cpu(proc.pid)
        threads = sorted(((tid, name, (c - th0.get(tid, (name, 0.0))[1]) / wall)
                          for tid, (name, c) in th1.items()), key=lambda x: -x[2])
        return t0_wall, Run(cpu, rss, threads=threads)

    def process(self, cmd: list[str], name: str, measure_s: float | None = None) -> Run:
        """CPU per second of any command over the window after a 3 s warm-up."""
        proc = ChildProcess(cmd, name=name, log_dir=self.logs)
        try:
            return self._window(proc, 3.0, measure_s or self.measure_s, 1.0)[1]
        finally:
            proc.terminate()

    def naive(self, url: str, latency_s: float) -> Run:
        """The naive loop (read a frame, post it, wait for the reply) against a recording server."""
        server = RecordingServer(latency_s)
        server.start()
        try:
            t0 = time.time() + 3.0  # the warm-up of process()
            run = self.process([sys.executable, BENCH, "_cv2", url, "naive", server.url], "naive")
        finally:
            server.stop()
        run.uploads = server.since(t0)
        return run

    def start_daemon(self, name: str, urls: list[str], latency_s: float, sample_fps: float = 2,
                     max_side: int = 640, env: dict[str, str] | None = None, external_server: bool = False,
                     **capture) -> tuple[ChildProcess, Any, Path]:
        """The real daemon, one camera per URL, against a recording server (in this process) or
        `focoos-edge local-server` (a process of its own: no upload records); returns the process,
        the server and the file the daemon's thread names go to."""
        server, api_url = self._server(name, latency_s, external_server)
        cams = [{"name": f"cam{i}", "source": url, "sample_fps": sample_fps, "max_side": max_side}
                for i, url in enumerate(urls)]
        work = self.logs / name
        work.mkdir(parents=True, exist_ok=True)
        cmd = daemon_command(work, cams, capture, api_url=api_url, mqtt_port=self.broker.port,
                             inference={"max_in_flight": 4, "timeout_s": 10}, log_level="warning",
                             stats_interval_s=5, device_id=name)
        names = work / "threads.json"
        proc = ChildProcess(cmd, name=name, log_dir=self.logs,
                            env={**os.environ, **(env or {}), "BENCH_THREAD_NAMES": str(names)})
        return proc, server, names

    def daemon(self, name: str, urls: list[str], latency_s: float, measure_s: float | None = None,
               rss_every_s: float = 1.0, external_server: bool = False, **kw) -> Run:
        """One window of the real daemon (see start_daemon), with what the server received and
        the detections messages the broker passed on during it."""
        proc, server, names = self.start_daemon(name, urls, latency_s, external_server=external_server, **kw)
        try:
            t0, run = self._window(proc, self.warmup_s, measure_s or self.measure_s, rss_every_s)
            t1 = time.time()
            run.threads = _named(run.threads, names)
        finally:
            proc.terminate(timeout_s=20)
            server.terminate() if external_server else server.stop()
        run.uploads = [] if external_server else server.since(t0)
        run.messages = [m.json() for m in self.sub.messages(f"focoos/{name}/+/detections")
                        if t0 <= m.received_at < t1]
        return run

    def _server(self, name: str, latency_s: float, external: bool):
        if not external:
            server = RecordingServer(latency_s)
            server.start()
            return server, server.url
        port = free_port()
        cmd = [sys.executable, "-m", "focoos_edge", "local-server", "--port", str(port),
               "--latency-ms", str(latency_s * 1000)]
        server = ChildProcess(cmd, name=f"{name}-server", log_dir=self.logs)
        wait_for_port(port, 20, server)
        return server, f"http://127.0.0.1:{port}/v0"


def _named(threads: list[tuple], names_file: Path) -> list[tuple]:
    """Python thread names (from the shim's file) instead of the kernel's 'python'."""
    try:
        names = {int(k): v for k, v in json.loads(names_file.read_text()).items()}
    except (OSError, ValueError):
        return threads
    return [(tid, names.get(tid, comm), c) for tid, comm, c in threads]


def daemon_command(work: Path, cams: list[dict], capture: dict, **config) -> list[str]:
    """The daemon's CLI (`run -c CONFIG`, `capture` settings added to every camera) through
    `bench.py _daemon`, which only names the threads for the report."""
    path = daemon_config(work, api_key=API_KEY, cameras=[{**c, **capture} for c in cams], **config)
    return [sys.executable, BENCH, "_daemon", "run", "-c", str(path)]


def daemon_shim(argv: list[str]) -> int:
    """`_daemon run -c CONFIG`: the daemon's own CLI, its threads' names written to
    $BENCH_THREAD_NAMES every 2 s (Python does not give them to the kernel)."""
    from focoos_edge.cli import main
    names_path = os.environ.get("BENCH_THREAD_NAMES")
    if names_path:
        threading.Thread(target=_dump_thread_names, args=(Path(names_path),), daemon=True,
                         name="bench-thread-names").start()
    return main(argv)


def _dump_thread_names(path: Path) -> None:
    never = threading.Event()
    while not never.wait(2.0):
        path.write_text(json.dumps({t.native_id: t.name for t in threading.enumerate()}))


def cv2_loop(argv: list[str]) -> int:
    """`_cv2 URL MODE [API]`: `read` every frame, `grab` all + retrieve at 2 fps, or `naive`:
    read a frame, resize + encode it, post it and wait for the reply (one request at a time, a
    new connection each, as the Focoos SDK does), again and again."""
    url, mode, api = argv[0], argv[1], argv[2] if len(argv) > 2 else ""
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    import requests
    cap, next_s = cv2.VideoCapture(url, cv2.CAP_FFMPEG), 0.0
    while True:
        if mode == "grab":
            if not cap.grab():
                return 1
            if time.monotonic() >= next_s:
                next_s = time.monotonic() + 0.5
                cap.retrieve()
            continue
        ok, frame = cap.read()
        if not ok:
            return 1
        if mode == "naive":
            small = cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)
            jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
            requests.post(f"{api}/models/local-aruco/inference", headers={"X-API-Key": API_KEY},
                          files={"file": ("image", jpeg, "image/jpeg")}, timeout=30)
