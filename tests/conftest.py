"""Shared fixtures: real Mosquitto brokers, mosquitto_sub subscribers, RTSP cameras, media.

Every process a fixture starts is registered with the test's ``ProcessRegistry`` and stopped at
teardown, whether the test passed or failed; when a test fails, the stderr tail of each of them
is attached to the report. A missing tool is an error naming its apt package, never a skip: the
CI installs them all.

Helpers for the tests themselves: ``from procs import wait_until, ...`` and ``import media``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import media
import pytest
from daemon_infra import KEY
from media import Marker
from mqtt_infra import CLIENTS_APT, MOSQUITTO_APT, Mosquitto, MqttSubscriber
from procs import ChildProcess, InfraError, ProcessRegistry, require_tool
from rtsp_infra import RtspServer, check_gstreamer

from focoos_edge.tools.localserver import LocalServer

MARKER_CLIP_MARKERS = (
    Marker(id=3, x=160, y=140, size=240),
    Marker(id=17, x=860, y=380, size=300),
    Marker(id=42, x=1480, y=720, size=200),
)


_REGISTRY_KEY = pytest.StashKey[ProcessRegistry]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On a failed test, attach the stderr tails of the processes its fixtures started."""
    outcome = yield
    report = outcome.get_result()
    registry = item.stash.get(_REGISTRY_KEY, None)
    if report.failed and report.when in ("setup", "call") and registry is not None:
        for title, text in registry.sections():
            report.sections.append((title, text))


@pytest.fixture
def process_registry(request: pytest.FixtureRequest) -> Iterator[ProcessRegistry]:
    """The registry of this test's processes (the other fixtures use it)."""
    registry = ProcessRegistry()
    request.node.stash[_REGISTRY_KEY] = registry
    yield registry
    errors = registry.stop_all()
    if errors:
        pytest.fail("stopping test processes failed:\n" + "\n".join(errors))


@pytest.fixture
def spawn(process_registry: ProcessRegistry, tmp_path: Path) -> Callable[..., ChildProcess]:
    """Start any command as a tracked ChildProcess: ``spawn(cmd, name="daemon", env=..., cwd=...)``.

    Logs go to ``tmp_path/logs``; the process is terminated (SIGTERM, then SIGKILL) at teardown.
    """

    def start(cmd: list[str], *, name: str = "child", **kwargs: object) -> ChildProcess:
        proc = ChildProcess(cmd, name=name, log_dir=tmp_path / "logs", **kwargs)
        process_registry.add(proc, proc.terminate)
        return proc

    return start


def _fail_on_missing(check: Callable[[], object]) -> None:
    try:
        check()
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def mqtt_tools() -> None:
    """Fail (never skip) when the Mosquitto broker or clients are missing."""
    _fail_on_missing(lambda: require_tool("mosquitto", MOSQUITTO_APT))
    _fail_on_missing(lambda: require_tool("mosquitto_sub", CLIENTS_APT))
    _fail_on_missing(lambda: require_tool("mosquitto_pub", CLIENTS_APT))


@pytest.fixture(scope="session")
def gst_tools() -> None:
    """Fail (never skip) when /usr/bin/python3 cannot run the GStreamer RTSP server."""
    _fail_on_missing(check_gstreamer)


@pytest.fixture(scope="session")
def ffmpeg_tool() -> None:
    """Fail (never skip) when ffmpeg is missing."""
    _fail_on_missing(lambda: require_tool("ffmpeg", "ffmpeg"))


@pytest.fixture
def mosquitto_factory(
    mqtt_tools: None, process_registry: ProcessRegistry, tmp_path: Path
) -> Callable[..., Mosquitto]:
    """``mosquitto_factory(persistence=False, port=None, extra_config=())`` -> a started broker."""
    counter = iter(range(1000))

    def make(**kwargs: object) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{next(counter)}", **kwargs)
        process_registry.add(broker, broker.kill)
        return broker.start()

    return make


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A fresh broker on a free port (``.port``), killed at teardown."""
    return mosquitto_factory()


@pytest.fixture
def mqtt_sub(
    mqtt_tools: None, process_registry: ProcessRegistry, tmp_path: Path
) -> Callable[..., MqttSubscriber]:
    """``mqtt_sub(port, topic="#", qos=1, persistent_id=None)`` -> a live MqttSubscriber."""

    def make(
        port: int, topic: str = "#", qos: int = 1, persistent_id: str | None = None
    ) -> MqttSubscriber:
        sub = MqttSubscriber(
            port, tmp_path / "mqtt-sub", topic=topic, qos=qos, client_id=persistent_id
        )
        process_registry.add(sub, sub.stop)
        return sub.start()

    return make


@pytest.fixture
def rtsp_server(
    gst_tools: None, process_registry: ProcessRegistry, tmp_path: Path
) -> Callable[..., RtspServer]:
    """``rtsp_server(pattern="ball" | clip=PATH, width, height, fps, user, password, port)``.

    Returns a started RtspServer (``.url``, ``.kill()``, ``.restart()``), stopped at teardown.
    """
    counter = iter(range(1000))

    def make(**kwargs: object) -> RtspServer:
        server = RtspServer(tmp_path / f"rtsp-{next(counter)}", **kwargs)
        process_registry.add(server, server.terminate)
        return server.start()

    return make


@dataclass(frozen=True)
class MarkerClip:
    """The session's marker clip and what is drawn in it."""

    path: Path
    width: int
    height: int
    fps: int
    seconds: int
    markers: tuple[Marker, ...]


@pytest.fixture(scope="session")
def marker_clip(ffmpeg_tool: None, tmp_path_factory: pytest.TempPathFactory) -> MarkerClip:
    """A 1920x1080, 25 fps, 40 s static H.264 MP4 with three ArUco markers (``.markers``)."""
    clip = MarkerClip(
        path=tmp_path_factory.mktemp("media") / "markers-1080p.mp4",
        width=1920,
        height=1080,
        fps=25,
        seconds=40,
        markers=MARKER_CLIP_MARKERS,
    )
    media.make_marker_clip(
        clip.path, clip.width, clip.height, clip.fps, clip.seconds, markers=clip.markers
    )
    return clip


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    """A Focoos-compatible inference server (real ArUco detector) on a free port, key `daemon_infra.KEY`."""
    server = LocalServer(port=0, api_key=KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tmp_state_dir(tmp_path: Path) -> Path:
    """An empty directory for the daemon's state (spools, outbox)."""
    state = tmp_path / "state"
    state.mkdir()
    return state
