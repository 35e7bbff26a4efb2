"""A Debian 12 VM under qemu TCG, no network device, driven through a virtio-serial agent.

The root image (ext4, made from the cached mmdebstrap tarball) is cached too and never written:
each boot writes to a qcow2 overlay. A second disk carries what the test brings (wheels, source).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.vm.images import CACHE

AGENT = Path(__file__).with_name("agent.py")
AGENT_UNIT = """[Unit]
Description=test agent on the virtio-serial port
[Service]
ExecStart=/usr/bin/python3 /usr/local/sbin/vm-agent
Restart=always
[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class BaseImage:
    root: Path
    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


def _customize(tree: Path) -> None:
    """What a throw-away test VM needs on top of mmdebstrap's tree."""
    (tree / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (tree / "etc/hostname").write_text("focoos-vm\n")
    (tree / "usr/local/sbin/vm-agent").write_bytes(AGENT.read_bytes())
    (tree / "usr/local/sbin/vm-agent").chmod(0o755)
    (tree / "etc/systemd/system/vm-agent.service").write_text(AGENT_UNIT)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "vm-agent.service").symlink_to("/etc/systemd/system/vm-agent.service")


def base_image(tarball: Path, prepare: Callable[[Path], None] = lambda tree: None,
               prepare_key: str = "") -> tuple[BaseImage, float]:
    """The cached root image for ``tarball`` (built now if missing) and the seconds that took.
    ``prepare(tree)`` adds to the unpacked tree before the image is made; ``prepare_key`` names what
    it adds (part of the cache key)."""
    key = hashlib.sha256(AGENT.read_bytes() + AGENT_UNIT.encode() + tarball.name.encode()
                         + prepare_key.encode()).hexdigest()[:10]
    folder = CACHE / f"{tarball.stem}-img-{key}"
    image = BaseImage(folder / "root.img", folder / "vmlinuz", folder / "initrd.img")
    if image.root.is_file():
        return image, 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(tree)], check=True, timeout=600)
        _customize(tree)
        prepare(tree)
        staging = Path(tmp) / "out"
        staging.mkdir()
        (staging / "vmlinuz").write_bytes(next((tree / "boot").glob("vmlinuz-*")).read_bytes())
        (staging / "initrd.img").write_bytes(next((tree / "boot").glob("initrd.img-*")).read_bytes())
        subprocess.run(["mkfs.ext4", "-q", "-L", "root", "-d", str(tree), str(staging / "root.img"), "3G"],
                       check=True, timeout=600)
        staging.rename(folder)
    for stale in CACHE.glob(f"{tarball.stem}-img-*"):  # older keys: a 3 GB (sparse) image each
        if stale != folder:
            shutil.rmtree(stale, ignore_errors=True)
    return image, time.monotonic() - started


def data_disk(source: Path, image: Path, size: str = "1G") -> Path:
    """An ext4 image holding ``source``'s files (the VM mounts it)."""
    subprocess.run(["mkfs.ext4", "-q", "-L", "payload", "-d", str(source), str(image), size], check=True,
                   timeout=600)
    return image


class VM:
    """One running qemu. ``run`` executes a shell command inside as root."""

    def __init__(self, base: BaseImage, workdir: Path, data: Path | None = None, memory_mb: int = 2048,
                 cpus: int = 2):
        self.workdir = workdir
        self.serial_log = workdir / "serial.log"
        self.agent_path = workdir / "agent.sock"
        overlay = workdir / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base.root),
                        str(overlay)], check=True, timeout=60)
        command = [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mb),
            "-display", "none", "-monitor", "none", "-serial", f"file:{self.serial_log}", "-nic", "none",
            "-kernel", str(base.kernel), "-initrd", str(base.initrd),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
            "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-chardev", f"socket,id=agent,path={self.agent_path},server=on,wait=off",
            "-device", "virtio-serial", "-device", "virtserialport,chardev=agent,name=agent",
            "-no-reboot",
        ]
        if data is not None:
            command += ["-drive", f"file={data},format=raw,if=virtio,readonly=on"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=(workdir / "qemu.err").open("wb"))
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._next_id = 0

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until the agent answered (boot time); TimeoutError if it never does."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"qemu exited {self.process.returncode}: {self.tail()}")
            try:
                if self.run("true", timeout_s=5, reply_timeout_s=5).rc == 0:
                    return time.monotonic() - started
            except (OSError, TimeoutError):
                self._close()
                time.sleep(1)
        raise TimeoutError(f"the VM did not answer within {timeout_s:.0f} s: {self.tail()}")

    def run(self, cmd: str, timeout_s: float = 120, reply_timeout_s: float | None = None) -> Result:
        """Run ``cmd`` with bash inside the VM; its exit status and output."""
        sock = self._connect()
        self._next_id += 1
        request = {"id": self._next_id, "cmd": cmd, "timeout": timeout_s}
        sock.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + (reply_timeout_s or timeout_s + 30)
        while True:
            reply = self._read_line(deadline)
            if reply.get("id") == self._next_id:
                return Result(reply["rc"], reply["out"], reply["err"])

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(self.agent_path))
            self._sock, self._buffer = sock, b""
        return self._sock

    def _read_line(self, deadline: float) -> dict:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the VM agent")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no answer from the VM agent") from None
            if not chunk:
                raise OSError("agent socket closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.serial_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Power off (the overlay is thrown away with the work folder)."""
        try:
            self.run("systemctl poweroff --no-block", timeout_s=10, reply_timeout_s=10)
            self.process.wait(timeout=60)
        except (OSError, TimeoutError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=30)
        finally:
            self._close()
