#!/usr/bin/env python3
"""focoos-edge benchmark: the real daemon against a local RTSP camera, inference server and Mosquitto.

    .venv/bin/python scripts/bench.py            # about 10 minutes (40 s windows)
    .venv/bin/python scripts/bench.py --quick    # about 4 minutes (12 s windows), noisier
    .venv/bin/python scripts/bench.py --soak-min 30 --json bench.json   # 4-camera run: 30 min soak

It encodes its own media with ffmpeg (cached in --work-dir): 1080p25 H.264, GOP 25 (1 s), no
B-frames, testsrc2 with the frame number written as 12 black/white blocks, so the age of every
uploaded picture can be read back from the JPEG that a recording inference server receives. Each
case gets a fresh RTSP server (tests/rtsp_server.py, serving the clip in real time), and each
figure's baseline is measured in the same run. CPU figures run side by side with their baseline
(the daemon and ffmpeg's decode of the same stream at the same time) over 5 windows: the ratio is
the median of the per-window ratios, with its spread. Ratios are measurements on this machine: on
a shared or busy machine, run it twice and compare. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench_results
import benchlib as lib
import cv2
from benchlib import FPS, Bench, Observer, Run, pct
from procs import ChildProcess

FRAME_MS = 1000 / FPS


def row(case, figure, baseline, ratio, target="-", met="-"):
    """(case, figure, baseline, ratio, target, met?)"""
    return (case, figure, baseline, ratio, target, met)


def ok(value: float, limit: float, at_least: bool = False) -> str:
    return "yes" if (value >= limit if at_least else value <= limit) else "NO"


def p50_99(values: list[float], digits: int = 0) -> str:
    return f"{pct(values, .5):.{digits}f} / {pct(values, .99):.{digits}f}"


# -- cases ----------------------------------------------------------------------------------------------
FFMPEG = ["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-rtsp_transport", "tcp"]
WINDOWS = 5  # CPU: side-by-side windows per case (median and spread of the per-window ratios)


def floor_cmd(url: str, keyframes: bool = False) -> list[str]:
    """ffmpeg decoding the stream and throwing the frames away: the decode floor."""
    return FFMPEG + (["-skip_frame", "nokey"] if keyframes else []) + ["-i", url, "-f", "null", "-"]


def cpu_cases(b: Bench) -> dict[str, dict[str, list[float]]]:
    """CPU per window, each case's processes side by side on one fresh camera: the daemon (default,
    keyframes) with the ffmpeg floors, and the two plain OpenCV loops (read every frame; grab every
    frame and retrieve 2 a second)."""
    out = {}
    window_s = b.measure_s / 2
    for key, capture in [("default", {}), ("keyframes", {"decode": "keyframes"})]:
        cam = b.camera(b.clip)
        procs = {"floor": ChildProcess(floor_cmd(cam.url), name=f"floor-{key}", log_dir=b.logs)}
        if key == "keyframes":
            procs["floor_key"] = ChildProcess(floor_cmd(cam.url, True), name="floor-key", log_dir=b.logs)
        procs["daemon"], server, _ = b.start_daemon(f"cpu-{key}", [cam.url], latency_s=1.0, **capture)
        try:
            out[key] = lib.side_by_side(procs, WINDOWS, window_s, b.warmup_s)
        finally:
            for proc in procs.values():
                proc.terminate(timeout_s=20)
            server.stop()
            cam.terminate()
    cam = b.camera(b.clip)
    loops = {mode: ChildProcess([sys.executable, lib.BENCH, "_cv2", cam.url, mode], name=f"cv2-{mode}",
                                log_dir=b.logs) for mode in ("read", "grab")}
    try:
        out["cv2"] = lib.side_by_side(loops, WINDOWS, window_s, 3.0)
    finally:
        for proc in loops.values():
            proc.terminate()
        cam.terminate()
    return out


def daemons(b: Bench) -> tuple[dict[str, Run], dict[str, list[float]]]:
    """The daemon (default, keyframes) and the naive loop against a 1 s server: freshness, bytes,
    threads."""
    runs, ages = {}, {}
    for key, capture in [("default", {}), ("keyframes", {"decode": "keyframes"}), ("naive", None)]:
        cam = b.camera(b.clip)
        observer = Observer(cam.url)
        observer.start()
        try:
            runs[key] = (b.naive(cam.url, latency_s=1.0) if capture is None
                         else b.daemon(key, [cam.url], latency_s=1.0, **capture))
            ages[key] = observer.ages_ms(runs[key].uploads, b.clip_frames_n)
        finally:
            observer.close()
            cam.terminate()
    return runs, ages


def side_row(case: str, cpu: dict[str, list[float]], num: str, den: str, base_label: str,
             target: str = "-", limit: float | None = None) -> tuple:
    """A CPU row from side-by-side windows: medians, the median per-window ratio and its spread."""
    r = lib.ratios(cpu, num, den)
    med = statistics.median(r)
    figure = f"{statistics.median(cpu[num]) * 100:.1f}% (ratio {min(r):.2f}-{max(r):.2f}, {len(r)} windows)"
    return row(case, figure, f"{base_label}: {statistics.median(cpu[den]) * 100:.1f}%", med, target,
               ok(med, limit) if limit is not None else "-")


def cpu_rows(cpu: dict[str, dict[str, list[float]]]) -> list[tuple]:
    floor = "ffmpeg -threads 1 decode, same time"
    return [
        side_row("CPU/camera 1080p25 @2 fps, share of a core", cpu["default"], "daemon", "floor", floor,
                 "<= 1.10x", 1.10),
        side_row("  same, decode: keyframes (GOP 1 s)", cpu["keyframes"], "daemon", "floor", floor,
                 "<= 0.25x", 0.25),
        side_row("  decode: keyframes vs its own floor", cpu["keyframes"], "daemon", "floor_key",
                 "ffmpeg -skip_frame nokey, same time"),
        side_row("  cv2 grab all + retrieve 2 fps, alone", cpu["cv2"], "grab", "read",
                 "cv2 read() every frame, same time"),
    ]


def freshness_rows(runs: dict[str, Run], ages: dict[str, list[float]]) -> list[tuple]:
    naive = f"naive loop: {p50_99(ages['naive'])}"
    rows = []
    for key, label in [("default", "freshness at upload p50 / p99, ms"),
                       ("keyframes", "  same, decode: keyframes (keyframe age)")]:
        p99 = pct(ages[key], .99)
        target = key != "keyframes"
        rows.append(row(label, p50_99(ages[key]), naive, p99 / FRAME_MS,
                        f"p99 <= 2 frames ({2 * FRAME_MS:.0f} ms)" if target else "-",
                        ok(p99, 2 * FRAME_MS) if target else "-"))
    msgs = runs["default"].messages
    overhead = [m["latency_ms"]["total"] - m["latency_ms"]["inference"] for m in msgs if not m.get("replayed")]
    trip = pct([m["latency_ms"]["inference"] for m in msgs], .5)
    rows.append(row("pipeline overhead p50 / p99, ms (640 px)", p50_99(overhead, 1),
                    f"inference round trip p50: {trip:.0f} ms", pct(overhead, .5) / 15,
                    "p50 <= 15 ms", ok(pct(overhead, .5), 15)))
    return rows


def bytes_row(b: Bench, run: Run) -> tuple:
    uploads = run.uploads[:20]
    frames = lib.clip_frames(b.clip, {n % b.clip_frames_n for _, _, n in uploads})
    sdk = statistics.mean(len(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]) for f in frames.values())
    ours = statistics.mean(size for _, size, _ in uploads)
    return row("bytes/frame, 640 px q80", f"{ours / 1024:.1f} KiB", f"SDK, full size q95: {sdk / 1024:.0f} KiB",
               sdk / ours, ">= 5x fewer", ok(sdk / ours, 5, at_least=True))


def uplink_row(b: Bench) -> tuple:
    """Two 360p cameras sampled at 25 fps (50 fps offered) against a 100 ms server process."""
    cam = b.camera(b.small_clip)
    try:
        run = b.daemon("uplink", [cam.url, cam.url], latency_s=0.1, sample_fps=25, external_server=True)
    finally:
        cam.terminate()
    fps, ideal = len(run.messages) / b.measure_s, 4 / 0.1
    return row("uplink results/s, 100 ms server, 4 in flight", f"{fps:.1f}", f"max_in_flight/latency: {ideal:.0f}",
               fps / ideal, ">= 0.9x", ok(fps / ideal, 0.9, at_least=True))


def memory_rows(b: Bench, one_camera: Run, soak_min: float) -> list[tuple]:
    code = ("import cv2, numpy, requests, paho.mqtt.client, focoos_edge.service.daemon; "
            "print(open('/proc/self/statm').read().split()[1])")
    floor_mb = int(subprocess.check_output([sys.executable, "-c", code])) * os.sysconf("SC_PAGE_SIZE") / 2**20
    base = f"imports alone: {floor_mb:.0f} MB"
    runs = {}
    for key, kw in [("default", {}), ("keyframes", {"decode": "keyframes"})]:
        cam = b.camera(b.clip)
        soak = soak_min * 60 if key == "default" else 0
        try:
            runs[key] = b.daemon(f"memory-{key}", [cam.url] * 4, latency_s=0.1, measure_s=soak or None,
                                 rss_every_s=5.0 if soak else 1.0, **kw)
        finally:
            cam.terminate()
    mb = {k: max(r.rss) / 2**20 for k, r in runs.items()}
    one = max(one_camera.rss) / 2**20
    rows = [row("RSS, 1 camera 1080p, MB", f"{one:.0f}", base, one / floor_mb),
            row("RSS, 4 cameras 1080p, MB", f"{mb['default']:.0f}", base, mb["default"] / 150, "<= 150 MB",
                ok(mb["default"], 150)),
            row("  same, decode: keyframes", f"{mb['keyframes']:.0f}", base, mb["keyframes"] / 150,
                "<= 150 MB", ok(mb["keyframes"], 150))]
    if not soak_min:
        return rows + [row("RSS growth over a soak", "not run", "use --soak-min 30", float("nan"), "<= 5 %")]
    rss = runs["default"].rss[len(runs["default"].rss) // 5:]  # the first fifth is warm-up
    start, end = statistics.median(rss[:5]), statistics.median(rss[-5:])
    return rows + [row(f"RSS growth over a {soak_min:g} min soak (4 cameras)", f"{(end / start - 1) * 100:.1f}%",
                       f"after warm-up: {start / 2**20:.0f} MB", (end / start - 1) / 0.05, "<= 5 %",
                       ok(end / start - 1, 0.05))]


# -- in-process measurements ------------------------------------------------------------------------------
def timed_ms(fn, repeat: int = 30) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1000


def micro(b: Bench) -> list[tuple[str, str]]:
    """Resize interpolations, MJPEG scaled decode, the gate's cost and savings (one thread)."""
    cv2.setNumThreads(1)  # CPU cost, not the latency of a parallel resize
    from focoos_edge.capture.mjpeg import MjpegDecoder
    from focoos_edge.capture.motion import SceneGate
    frame = lib.clip_frames(b.clip, {37})[37]
    out = []
    for name, src in [("1080p->640", frame), ("720->640 (after a 3/8 MJPEG decode)",
                                              cv2.resize(frame, (720, 405), interpolation=cv2.INTER_AREA))]:
        ref = cv2.resize(src, (640, 360), interpolation=cv2.INTER_AREA)
        for interp, label in [(cv2.INTER_AREA, "AREA"), (cv2.INTER_LINEAR, "LINEAR"), (cv2.INTER_NEAREST, "NEAREST")]:
            ms = timed_ms(lambda src=src, interp=interp: cv2.resize(src, (640, 360), interpolation=interp))
            psnr = cv2.PSNR(ref, cv2.resize(src, (640, 360), interpolation=interp))
            out.append((f"resize {name} {label}", f"{ms:.2f} ms, PSNR vs AREA {min(psnr, 99):.1f} dB"))
    dec = MjpegDecoder()
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    full = timed_ms(lambda: cv2.resize(dec.decode_full(jpeg), (640, 360), interpolation=cv2.INTER_AREA))
    scaled = timed_ms(lambda: dec.decode_scaled(jpeg, 640))
    out.append(("MJPEG 1080p -> 640: full decode + AREA / decode_scaled", f"{full:.2f} / {scaled:.2f} ms"))
    small = cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)
    out.append(("scene gate check, 640-px frame", f"{timed_ms(lambda: SceneGate(2.0, 60).check(small)):.2f} ms"))
    for label, clip in [("static", b.static_clip), ("moving", b.clip)]:
        out.append((f"an hour at 2 fps of the {label} clip", gate_savings(clip)))
    return out + privacy_micro(b)


MASKS = [[[0.0, 0.0], [0.3, 0.0], [0.3, 0.2], [0.0, 0.2]], [[0.6, 0.5], [0.9, 0.55], [0.8, 0.95], [0.55, 0.9]]]


def privacy_micro(b: Bench) -> list[tuple[str, str]]:
    """Privacy mask fill, crop and mask tracing per frame; bytes saved by max_side auto and a crop."""
    from focoos_edge.capture.encode import JpegEncoder, resize_to_max_side
    from focoos_edge.capture.frameprep import FramePrep
    from focoos_edge.capture.source import ScaledFrame
    frames = list(lib.clip_frames(b.clip, {12, 37, 62, 87}).values())
    frame = frames[1]
    small, scale = resize_to_max_side(frame, 640)
    prep = FramePrep(MASKS)
    prep.masks_for(640, 360)  # cached once per frame size, as in the camera thread
    fill = timed_ms(lambda: prep.apply(ScaledFrame(small, 1920, 1080, scale), 640), 300)
    plain = timed_ms(lambda: resize_to_max_side(frame, 640))
    crop = FramePrep(crop=[0.5, 0.0, 1.0, 1.0])  # the source hands over the whole frame: one resize
    cropped = timed_ms(lambda: crop.apply(ScaledFrame(frame, 1920, 1080, 1.0), 640))
    full_masks = FramePrep(MASKS)
    canvas = frame.copy()  # filled in place: the clip's frames stay unmasked for the byte rows
    full_fill = timed_ms(lambda: full_masks.apply(ScaledFrame(canvas, 1920, 1080, 1.0), 640), 100)
    enc = JpegEncoder()

    def kib(images) -> float:
        return statistics.mean(len(enc.encode(i, 80)) for i in images) / 1024

    full640 = kib(resize_to_max_side(f, 640)[0] for f in frames)
    auto320 = kib(resize_to_max_side(f, 320)[0] for f in frames)
    quarter = FramePrep(crop=[0.5, 0.5, 1.0, 1.0])
    crop_q = kib(quarter.apply(ScaledFrame(f.copy(), 1920, 1080, 1.0), 640).image for f in frames)
    same_detail = kib(resize_to_max_side(f, 1280)[0] for f in frames)
    return [
        ("privacy mask fill (2 polygons), 640-px / 1080p frame",
         f"{fill * 1000:.0f} / {full_fill * 1000:.0f} us (1080p->640 resize: {plain:.2f} ms)"),
        ("crop [0.5, 0, 1, 1] of 1080p to 640 px (slice + resize)", f"{cropped:.2f} ms (no crop: {plain:.2f} ms)"),
        ("mask tracing, one 100x100 detection mask", f"{trace_cost_ms():.3f} ms"),
        ("bytes/frame, max_side auto with a 320-px model", f"{auto320:.1f} KiB vs 640 px {full640:.1f} KiB "
                                                           f"({(1 - auto320 / full640) * 100:.0f}% saved)"),
        ("bytes/frame, crop [0.5, 0.5, 1, 1] at 640 px", f"{crop_q:.1f} KiB vs the whole frame at the same "
                                                         f"detail (1280 px) {same_detail:.1f} KiB "
                                                         f"({(1 - crop_q / same_detail) * 100:.0f}% saved)"),
    ]


def trace_cost_ms() -> float:
    import base64

    import numpy as np

    from focoos_edge.inference.masks import trace_masks
    from focoos_edge.inference.parse import Detection
    mask = np.zeros((101, 101), np.uint8)
    cv2.fillPoly(mask, [np.array([[5, 10], [95, 3], [90, 97], [8, 88]], np.int32)], 255)
    png = base64.b64encode(cv2.imencode(".png", mask)[1].tobytes()).decode()
    det = Detection("a", 0, 0.9, (100.0, 100.0, 200.0, 200.0), has_mask=True, mask_png=png)
    return timed_ms(lambda: trace_masks([det], polygons=True, upload_w=640, upload_h=360), 300)


def gate_savings(clip: Path) -> str:
    """Inferences in a simulated hour at 2 fps (the clip's sampled frames, looped): none, gate
    (threshold 1.0, heartbeat 60 s), budget 600/h, both."""
    from focoos_edge.capture.motion import InferenceBudget, SceneGate
    cap, frames, n = cv2.VideoCapture(str(clip)), [], 0
    while cap.grab():
        if n % 12 == 0:
            frames.append(cv2.resize(cap.retrieve()[1], (640, 360), interpolation=cv2.INTER_AREA))
        n += 1
    cap.release()
    now = [0.0]
    gate, gate2 = SceneGate(1.0, 60, clock=lambda: now[0]), SceneGate(1.0, 60, clock=lambda: now[0])
    budget, budget2 = InferenceBudget(600, clock=lambda: now[0]), InferenceBudget(600, clock=lambda: now[0])
    sent = {"gate": 0, "budget": 0, "both": 0}
    diffs = []
    for tick in range(7200):
        img = frames[tick % len(frames)]
        d, thumb = gate.check(img)
        diffs.append(d.diff)
        if d.send:
            sent["gate"] += 1
            gate.sent(thumb)
        sent["budget"] += budget.try_spend()
        d2, thumb2 = gate2.check(img)
        if d2.send and budget2.try_spend():
            sent["both"] += 1
            gate2.sent(thumb2)
        now[0] += 0.5
    return (f"7200 sampled; gate {sent['gate']} ({(1 - sent['gate'] / 7200) * 100:.0f}% saved), budget 600/h "
            f"{sent['budget']}, gate + budget {sent['both']}; median diff {statistics.median(diffs[1:]):.2f}")


# -- output -----------------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    import av
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    tj = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libturbojpeg0"], capture_output=True,
                        text=True).stdout or "unknown (not a dpkg system)"
    ff = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split()[2]
    return {"CPU": f"{model}, {os.cpu_count()} cores ({platform.machine()})", "Python": platform.python_version(),
            "OpenCV": cv2.__version__, "libjpeg-turbo": tj, "PyAV": av.__version__, "ffmpeg": ff,
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def print_report(rows: list[tuple], extra: list[tuple[str, str]], info: dict[str, str]) -> None:
    print("\nmachine: " + "; ".join(f"{k} {v}" for k, v in info.items()) + "\n")
    table = [("case", "figure", "baseline (same run)", "ratio", "target", "met?")]
    table += [(*r[:3], "-" if r[3] != r[3] else f"{r[3]:.2f}", *r[4:]) for r in rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(6)]
    for i, r in enumerate(table):
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print("\nwithout a target:")
    for name, value in extra:
        print(f"  {name}: {value}")


def run(args: argparse.Namespace) -> int:
    info = machine()
    if args.micro:
        b = Bench(Path(args.work_dir), measure_s=12.0)
        try:
            print_report([], micro(b), info)
        finally:
            b.close()
        return 0
    b = Bench(Path(args.work_dir), measure_s=12.0 if args.quick else 40.0)
    try:
        cpu = cpu_cases(b)
        runs, ages = daemons(b)
        rows = cpu_rows(cpu) + freshness_rows(runs, ages) + [bytes_row(b, runs["default"])]
        rows += [uplink_row(b)] + memory_rows(b, runs["default"], args.soak_min) + bench_results.rows()
        extra = [(f"busiest threads, {key}, % of a core",
                  ", ".join(f"{n} {c * 100:.2f}" for _, n, c in runs[key].threads[:12]))
                 for key in ("default", "keyframes")]
        extra += micro(b)
    finally:
        b.close()
    print_report(rows, extra, info)
    print(f"\nlogs: {b.logs}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows, "extra": extra}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_daemon"]:
        return lib.daemon_shim(argv[1:])
    if argv[:1] == ["_cv2"]:
        return lib.cv2_loop(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12 s measurement windows instead of 40 s")
    p.add_argument("--soak-min", type=float, default=0, help="memory soak with 4 cameras, in minutes")
    p.add_argument("--work-dir", default="/tmp/focoos-bench", help="media cache and logs")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--micro", action="store_true", help="only the in-process measurements (about a minute)")
    p.add_argument("--results-only", action="store_true", help="only the results stage's per-frame rows (seconds)")
    args = p.parse_args(argv)
    if args.results_only:
        print_report(bench_results.rows(), [], machine())
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
