"""The container image (Containerfile): built with buildah from a Debian 12 base made by mmdebstrap
(no registry here) and the project's wheels (no PyPI in the build), then run with
`buildah run --isolation chroot`: the demo, and the daemon answering /healthz as a non-root user.
The /healthz handler itself is checked on the host first (no image needed)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import free_port

from focoos_edge.service.metrics import MetricsServer
from tests.vm.images import BASE_PACKAGES, cache_name, rootfs_tarball, tools_missing
from tests.vm.payload import ROOT, project_files, wheelhouse

IMAGE = "localhost/focoos-edge:test"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_reports_the_daemons_own_liveness() -> None:
    stuck: list[str] = []
    server = MetricsServer("127.0.0.1", 0, dict, lambda: list(stuck)).start()
    try:
        assert _get(f"http://127.0.0.1:{server.port}/healthz") == (200, "ok\n")
        stuck += ["uplink", "main loop"]
        assert _get(f"http://127.0.0.1:{server.port}/healthz") == (503, "stuck: uplink, main loop\n")
    finally:
        server.stop()


def buildah(*args: str, timeout_s: float = 600) -> str:
    done = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"buildah {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def base_image() -> str:
    """The mmdebstrap tarball imported as a local image (cached by buildah under its name)."""
    name = "localhost/focoos-base:" + cache_name("base", BASE_PACKAGES).removesuffix(".tar").split("-")[-1]
    if subprocess.run([*BUILDAH, "inspect", "--type", "image", name], capture_output=True).returncode == 0:
        return name
    tarball, _ = rootfs_tarball("base", BASE_PACKAGES)
    container = buildah("from", "scratch").strip()
    try:
        mount = buildah("mount", container).strip()
        subprocess.run(["tar", "-xf", str(tarball), "-C", mount, "--exclude=./dev/*"], check=True, timeout=600)
        buildah("umount", container)
        buildah("commit", "-q", container, name)
    finally:
        buildah("rm", container)
    return name


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[dict]:
    missing = tools_missing("buildah", "mmdebstrap")
    if missing or os.geteuid() != 0:
        pytest.skip(f"{', '.join(missing) or 'root'} needed to build the image (scripts/setup.sh --test)")
    context = tmp_path_factory.mktemp("context")
    for name in project_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(wheelhouse(), context / "wheels")
    started = time.monotonic()
    base = base_image()
    base_s = time.monotonic() - started
    started = time.monotonic()
    buildah("bud", "--isolation", "chroot", "--format", "docker", "--from", base, "--layers=false",
            "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "PIP_FIND_LINKS=/src/wheels",
            "-t", IMAGE, "-f", str(context / "Containerfile"), str(context), timeout_s=900)
    print(f"\ncontainer: base import {base_s:.0f} s, build {time.monotonic() - started:.0f} s")
    yield json.loads(buildah("inspect", "--type", "image", IMAGE))
    buildah("rmi", IMAGE)  # ~500 MB under vfs; the base stays (cached by name)


def run_in(image_name: str, script: str, volumes: tuple[str, ...] = (), timeout_s: float = 300):
    container = buildah("from", image_name).strip()
    try:
        args = [a for v in volumes for a in ("--volume", v)]
        return subprocess.run([*BUILDAH, "run", "--isolation", "chroot", *args, container, "--", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout_s)
    finally:
        buildah("rm", container)


def test_image_runs_as_non_root_with_volumes_secrets_and_a_healthcheck(image: dict) -> None:
    config = image["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert set(config["Volumes"]) == {"/config", "/data"}
    assert "CREDENTIALS_DIRECTORY=/run/secrets" in config["Env"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    assert config["Entrypoint"] == ["focoos-edge"]
    assert "PIP_NO_INDEX=" in config["Env"]  # the offline build's setting is not baked in


def test_the_demo_runs_inside_the_image(image: dict, mosquitto_factory) -> None:
    broker = mosquitto_factory()
    done = run_in(IMAGE, f"id -u && focoos-edge demo --seconds 25 --mqtt-port {broker.port} --workdir /tmp/demo")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == "10001"
    assert "demo_cam" in done.stdout and "aruco" in done.stdout.lower(), done.stdout[-3000:]


def test_the_daemon_reads_a_secret_file_and_answers_healthz(image: dict, mosquitto_factory, tmp_path: Path) -> None:
    broker = mosquitto_factory()
    hub_port, metrics_port = free_port(), free_port()  # buildah's chroot isolation shares the host's network
    secrets, conf = tmp_path / "secrets", tmp_path / "config"
    secrets.mkdir()
    conf.mkdir()
    (secrets / "focoos_api_key").write_text("fk-container-secret-1234\n")
    (conf / "config.yaml").write_text(f"""device_id: box
state_dir: /data
inference:
  api_url: http://127.0.0.1:{hub_port}/v0
  api_key_file: focoos_api_key
  model_ref: local-aruco
mqtt:
  host: 127.0.0.1
  port: {broker.port}
metrics:
  enabled: true
  port: {metrics_port}
cameras:
  - name: cam
    source: file:///tmp/clip.mp4
""")
    healthcheck = shlex.join(image["Docker"]["config"]["Healthcheck"]["Test"][1:])  # the image's own
    script = f"""set -e
python3 -c 'from focoos_edge.tools.demo import make_clip; make_clip("/tmp/clip.mp4")'
FOCOOS_LOCAL_API_KEY=fk-container-secret-1234 focoos-edge local-server --port {hub_port} 2>/tmp/server.log & server=$!
# chroot isolation has no PID namespace: whatever is left running outlives buildah run.
trap 'kill $server 2>/dev/null || true' EXIT
focoos-edge run -c /config/config.yaml 2>/tmp/daemon.log & daemon=$!
for i in $(seq 120); do
  if FOCOOS_EDGE_METRICS_PORT={metrics_port} {healthcheck}; then echo healthy; break; fi
  sleep 1
done
ls -n /data
rc=0; kill -TERM $daemon && wait $daemon || rc=$?; echo "daemon exit $rc"
tail -n 20 /tmp/daemon.log /tmp/server.log
"""
    done = run_in(IMAGE, script, volumes=(f"{secrets}:/run/secrets:ro", f"{conf}:/config:ro"))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "healthy" in done.stdout.splitlines() and "daemon exit 0" in done.stdout, out[-3000:]
    assert "spool.db" in done.stdout and " 10001 " in done.stdout  # /data written by the non-root user
    assert "fk-container-secret-1234" not in out
    left = subprocess.run(["pgrep", "-f", f"local-server --port {hub_port}"], capture_output=True, text=True)
    assert left.returncode == 1, f"the image's local server outlived the test: pid {left.stdout}"
