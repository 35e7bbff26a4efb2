"""An RTSP camera for the tests: tests/rtsp_server.py run by Debian's /usr/bin/python3.

The GStreamer bindings (python3-gi, gir1.2-gst-rtsp-server-1.0) exist only for the system
interpreter, so the server is a separate process; it is also what makes "the camera dies"
tests honest (SIGKILL, then start again on the same port).
"""

from __future__ import annotations

import base64
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

from procs import LOOPBACK, ChildProcess, InfraError, RestartableServer, free_port, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")
GST_APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly"
)
# The elements the two launch lines of rtsp_server.py need, and where Debian ships them.
_GST_CHECK = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("videotestsrc", "x264enc", "rtph264pay", "h264parse", "qtdemux",
                       "appsrc", "appsink", "filesrc") if Gst.ElementFactory.find(e) is None]
print(" ".join(missing))
"""


def check_gstreamer(timeout_s: float = 30.0) -> None:
    """Raise InfraError (naming the apt packages) unless the RTSP server can run here."""
    hint = f"install them with `apt-get install -y --no-install-recommends {GST_APT_PACKAGES}`"
    if not Path(SYSTEM_PYTHON).exists():
        raise InfraError(f"{SYSTEM_PYTHON} is missing: {hint}")
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", _GST_CHECK], capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise InfraError(f"GStreamer RTSP bindings unusable ({tail[0]}): {hint}")
    if done.stdout.strip():
        raise InfraError(f"GStreamer elements missing ({done.stdout.strip()}): {hint}")


def rtsp_options_ok(port: int, mount: str = "/cam", timeout_s: float = 2.0) -> bool:
    """True if an RTSP OPTIONS request to 127.0.0.1:port gets any RTSP/1.0 status line."""
    request = f"OPTIONS rtsp://{LOOPBACK}:{port}{mount} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
            sock.sendall(request)
            return sock.recv(64).startswith(b"RTSP/1.0 ")
    except OSError:
        return False


def rtsp_describe_status(
    port: int,
    mount: str = "/cam",
    user: str | None = None,
    password: str | None = None,
    timeout_s: float = 5.0,
) -> int:
    """Status code of an RTSP DESCRIBE (with basic credentials if given): 200, 401, 404..."""
    request = f"DESCRIBE rtsp://{LOOPBACK}:{port}{mount} RTSP/1.0\r\nCSeq: 2\r\n"
    request += "Accept: application/sdp\r\n"
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request += f"Authorization: Basic {token}\r\n"
    with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
        sock.sendall((request + "\r\n").encode())
        status_line = sock.makefile("rb").readline().decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("RTSP/") or not parts[1].isdigit():
        raise InfraError(f"not an RTSP status line: {status_line!r}")
    return int(parts[1])


class RtspServer(RestartableServer):
    """H.264 over RTSP at ``url`` (``rtsp://127.0.0.1:PORT/cam``).

    ``pattern`` (a live videotestsrc encoded by x264 as it is served) or ``clip`` (a
    pre-encoded MP4 without B-frames, served without re-encoding and looped forever; see
    media.py). With ``user`` and ``password`` the server requires basic auth and ``url``
    carries the credentials. ``start()`` must be called (the fixtures do).
    """

    name = "rtsp-server"

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        mount: str = "/cam",
        pattern: str = "ball",
        clip: Path | None = None,
        width: int = 1280,
        height: int = 720,
        fps: int = 25,
        user: str | None = None,
        password: str | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        if clip is not None and not Path(clip).is_file():
            raise InfraError(f"RTSP clip {clip} does not exist")
        self.port = port or free_port()
        self.mount = mount
        self.work_dir = work_dir
        self.user, self.password = user, password
        self.start_timeout_s = start_timeout_s
        self._args = ["--port", str(self.port), "--mount", mount]
        if clip is not None:
            self._args += ["--clip", str(clip)]
        else:
            self._args += ["--pattern", pattern, "--width", str(width), "--height", str(height)]
            self._args += ["--fps", str(fps)]
        if user is not None:
            self._args += ["--user", user, "--password", password]

    @property
    def url(self) -> str:
        """The stream URL, with ``user:password@`` when auth is on."""
        return self.url_with(self.user, self.password)

    @property
    def url_no_auth(self) -> str:
        """The stream URL without credentials."""
        return self.url_with(None, None)

    def url_with(self, user: str | None, password: str | None) -> str:
        """The stream URL with the given (for instance wrong) credentials, percent-encoded."""
        cred = "" if user is None else f"{quote(user, safe='')}:{quote(password or '', safe='')}@"
        return f"rtsp://{cred}{LOOPBACK}:{self.port}{self.mount}"

    def start(self) -> RtspServer:
        """Start the server; return once it printed READY and answers RTSP OPTIONS."""
        self._check_not_running()
        proc = ChildProcess(
            [SYSTEM_PYTHON, RTSP_SCRIPT, *self._args], name=self.name, log_dir=self.work_dir
        )
        self.proc = proc

        def ready() -> bool:
            if not proc.alive:
                raise InfraError(f"{proc.describe()}\nexited before it was ready")
            return "READY" in proc.stdout_text() and rtsp_options_ok(self.port, self.mount)

        wait_until(
            ready,
            self.start_timeout_s,
            message=lambda: f"RTSP server on port {self.port} not ready\n{proc.describe()}",
        )
        return self
