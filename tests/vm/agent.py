#!/usr/bin/python3
"""Runs inside the test VM (as root, a systemd service): executes shell commands the host sends over
the virtio-serial port "agent", one JSON line each, and answers with one JSON line
{"id", "rc", "out", "err"}. Standard library only: it runs on Debian's python3 before any install."""

import json
import os
import subprocess
import time

PORT = "/dev/virtio-ports/agent"


def handle(line: bytes) -> bytes:
    request = json.loads(line)
    try:
        done = subprocess.run(["bash", "-c", request["cmd"]], capture_output=True, timeout=request.get("timeout", 120),
                              stdin=subprocess.DEVNULL)
        reply = {"rc": done.returncode, "out": done.stdout.decode(errors="replace"),
                 "err": done.stderr.decode(errors="replace")}
    except subprocess.TimeoutExpired as exc:
        reply = {"rc": -1, "out": (exc.stdout or b"").decode(errors="replace"), "err": "agent: timed out"}
    reply["id"] = request["id"]
    return json.dumps(reply).encode() + b"\n"


def main() -> None:
    while not os.path.exists(PORT):  # udev makes the link shortly after boot
        time.sleep(0.2)
    fd = os.open(PORT, os.O_RDWR)
    buffer = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # no host connected: the port reads as end-of-file
            time.sleep(0.2)
            continue
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                reply = handle(line)
                while reply:
                    reply = reply[os.write(fd, reply):]


if __name__ == "__main__":
    main()
