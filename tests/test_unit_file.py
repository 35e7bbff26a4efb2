"""The systemd unit: exposure score, `systemd-analyze verify`, its directives, and the daemon working
under the unit's sandbox.

PID 1 is not systemd on the build machines, so the unit cannot be started. The sandbox tests rebuild
the parts of it that can break the daemon, from the unit file itself: the seccomp filters of
SystemCallFilter= (expanded by this machine's `systemd-analyze syscall-filter`),
SystemCallErrorNumber=, RestrictAddressFamilies= and MemoryDenyWriteExecute= (the rules systemd 252
loads), /proc mounted with ProcSubset=/ProtectProc='s options, a read-only root except the state
directory (ProtectSystem=strict) and an empty capability bounding set. Not rebuilt: DynamicUser,
PrivateUsers, the device cgroup, ProtectHome (this machine's Python lives in /root) and the
namespace restrictions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_infra import KEY, daemon_config
from procs import InfraError, require_tool

from focoos_edge.config.models import CameraConfig, InferenceConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "focoos-edge.service"
VENV_EXE = "/opt/focoos-edge/venv/bin/focoos-edge"
TOPIC = "focoos/box1"
PUBLISHER_STOP_S = 15.0  # Publisher.stop: pump join, outbox flush, `offline` ack: 5 s each


# -- reading the unit ------------------------------------------------------------------------------
def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in file order; comments skipped, backslash continuations joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current, pending = None, ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current, f"not a directive: {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    """Every value of a directive, in order."""
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: dict, section: str, key: str) -> str:
    """The effective (last) value of a directive; fails when it is absent."""
    found = values(unit, section, key)
    assert found, f"[{section}] {key}= is missing"
    return found[-1]


@pytest.fixture(scope="module")
def unit() -> dict:
    return parse_unit(UNIT.read_text())


def analyze(*args: str) -> subprocess.CompletedProcess:
    """Run systemd-analyze (Debian package `systemd`)."""
    try:
        exe = require_tool("systemd-analyze", "systemd")
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


# -- score and verify ------------------------------------------------------------------------------
def test_security_score_is_at_most_2():
    result = analyze("security", "--offline=yes", "--threshold=20", "--no-pager", str(UNIT))
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"Overall exposure level for focoos-edge\.service: (\d+\.\d+)", result.stdout)
    assert score, result.stdout
    assert float(score.group(1)) <= 2.0, result.stdout


def test_verify_reports_nothing_but_the_absent_venv():
    """On the real file, the only complaint may be the ExecStart binary, absent on a build machine."""
    result = analyze("verify", str(UNIT))
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    expected = f"focoos-edge.service: Command {VENV_EXE} is not executable: No such file or directory"
    assert all(line == expected for line in lines), lines


def test_verify_is_clean_once_the_executable_exists(tmp_path):
    """`verify` checks that Exec*= binaries exist: point them at a stub, keep everything else."""
    stub = tmp_path / "bin" / "focoos-edge"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "focoos-edge.service"  # same name: verify checks the unit named by the file
    copy.write_text(UNIT.read_text().replace(VENV_EXE, str(stub)))
    result = analyze("verify", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""


# -- directives ------------------------------------------------------------------------------------
def test_lifecycle_directives(unit):
    assert value(unit, "Service", "Type") == "notify"
    assert value(unit, "Service", "NotifyAccess") == "main"
    assert value(unit, "Service", "Restart") == "on-failure"
    assert "78" in value(unit, "Service", "RestartPreventExitStatus").split()
    assert int(value(unit, "Unit", "StartLimitBurst")) >= 2
    assert int(value(unit, "Unit", "StartLimitIntervalSec")) > 0
    assert value(unit, "Service", "ExecReload") == "/opt/focoos-edge/venv/bin/focoos-edge reload --pid $MAINPID"
    assert value(unit, "Service", "RuntimeDirectory") == "focoos-edge"
    start = value(unit, "Service", "ExecStart").split()
    pre = value(unit, "Service", "ExecStartPre").split()
    assert start[:2] == [VENV_EXE, "run"] and pre[:2] == [VENV_EXE, "check-config"]
    assert start[2:] == pre[2:] == ["-c", "/etc/focoos-edge/config.yaml"]  # the same file is checked


def test_watchdog_outlasts_the_ping_period_and_a_slow_loop(unit):
    watchdog_s = int(value(unit, "Service", "WatchdogSec"))
    # The daemon pings at most every second (Daemon._loop) while all loops turn: many pings fit in.
    assert 10 <= watchdog_s <= 60


def test_stop_timeout_outlasts_the_daemons_shutdown_deadline(unit):
    """Daemon.shutdown with default settings: camera join, uplink join, publisher stop."""
    cam, inf = CameraConfig.model_fields, InferenceConfig.model_fields
    camera_s = max(cam["read_timeout_s"].default, cam["open_timeout_s"].default) + 2.0
    uplink_s = inf["timeout_s"].default + 1.0
    deadline_s = camera_s + uplink_s + PUBLISHER_STOP_S
    assert int(value(unit, "Service", "TimeoutStopSec")) >= deadline_s + 10, deadline_s


def test_identity_and_hardening_directives(unit):
    expected = {
        "DynamicUser": "yes", "SupplementaryGroups": "video", "StateDirectory": "focoos-edge",
        "ConfigurationDirectory": "focoos-edge", "CapabilityBoundingSet": "", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectProc": "invisible", "ProcSubset": "pid",
        "MemoryDenyWriteExecute": "yes", "DevicePolicy": "closed", "DeviceAllow": "char-video4linux rw",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "SystemCallArchitectures": "native",
    }
    assert {key: value(unit, "Service", key) for key in expected} == expected
    assert values(unit, "Service", "SystemCallFilter") == ["@system-service", "~@privileged @resources"]


def test_credentials_reach_the_config_by_relative_name(unit, tmp_path):
    """LoadCredential IDs are what the config names; config.py finds them in $CREDENTIALS_DIRECTORY."""
    loads = dict(v.split(":", 1) for v in values(unit, "Service", "LoadCredential"))
    assert loads == {name: f"/etc/focoos-edge/credentials/{name}" for name in ("focoos_api_key", "mqtt_password")}
    defaults = {v.split(":", 1)[0] for v in values(unit, "Service", "SetCredential")}
    assert defaults == set(loads)  # a missing file must not fail the start
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "focoos_api_key").write_text("key-from-credential\n")
    (creds / "mqtt_password").write_text("pw-from-credential\n")
    config = tmp_path / "etc" / "config.yaml"
    config.parent.mkdir()
    config.write_text(
        "inference: {api_key_file: focoos_api_key, model_ref: m}\n"
        "mqtt: {username: edge, password_file: mqtt_password}\n"
        "cameras: [{name: a, source: 'usb:0'}]\n")
    loaded = load_config(config, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.inference.api_key_value == "key-from-credential"
    assert loaded.mqtt.password_value == "pw-from-credential"


# -- the sandbox -----------------------------------------------------------------------------------
def syscall_groups() -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`: group -> members (calls or @groups); comments skipped."""
    result = analyze("syscall-filter", "--no-pager")
    assert result.returncode == 0, result.stderr
    groups: dict[str, list[str]] = {}
    current = None
    for line in result.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line.strip() and not line.lstrip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        calls |= expand(groups[name], groups) if name.startswith("@") else {name}
    return calls


def seccomp_policy(unit: dict) -> dict:
    """The unit's seccomp settings, resolved: allowed calls, errno, socket families, MDWE."""
    groups = syscall_groups()
    allow: set[str] | None = None
    for line in values(unit, "Service", "SystemCallFilter"):
        if line.startswith("~"):
            assert allow is not None, "a deny-list filter is not rebuilt here"
            allow -= expand(line[1:].split(), groups)
        else:
            allow = (allow or set()) | expand(line.split(), groups)
    families = [int(getattr(socket, name)) for name in value(unit, "Service", "RestrictAddressFamilies").split()]
    return {"allow": sorted(allow or ()), "errno": int(getattr(errno, value(unit, "Service", "SystemCallErrorNumber"))),
            "families": families, "mdwe": value(unit, "Service", "MemoryDenyWriteExecute") == "yes"}


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


_ALLOW, _CMP_EQ, _CMP_GT, _CMP_MASKED_EQ = 0x7FFF0000, 4, 6, 7


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _libseccomp():
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _load_filter(lib, default: int, rules: list[tuple[int, str, tuple[_ArgCmp, ...]]]) -> None:
    ctx = lib.seccomp_init(default)
    for action, name, cmps in rules:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == -1:  # unknown to libseccomp: nothing to filter
            continue
        rc = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), (_ArgCmp * len(cmps))(*cmps) if cmps else None)
        assert rc == 0, (name, rc)
    rc = lib.seccomp_load(ctx)
    lib.seccomp_release(ctx)
    assert rc == 0, f"seccomp_load: {rc}"


def sandbox_exec(argv: list[str]) -> None:
    """Child side: `POLICY.json -- CMD...`: load the filters as systemd 252 does, then exec CMD."""
    policy = json.loads(Path(argv[0]).read_text())
    lib = _libseccomp()
    eperm = _errno_action(errno.EPERM)
    write_exec, exec_only, shm_exec = 0x2 | 0x4, 0x4, 0o100000  # PROT_WRITE|PROT_EXEC, PROT_EXEC, SHM_EXEC
    if policy["mdwe"]:  # systemd's seccomp_memory_deny_write_execute()
        _load_filter(lib, _ALLOW, [
            *[(eperm, call, (_ArgCmp(2, _CMP_MASKED_EQ, write_exec, write_exec),)) for call in ("mmap", "mmap2")],
            *[(eperm, call, (_ArgCmp(2, _CMP_MASKED_EQ, exec_only, exec_only),))
              for call in ("mprotect", "pkey_mprotect")],
            (eperm, "shmat", (_ArgCmp(2, _CMP_MASKED_EQ, shm_exec, shm_exec),))])
    top, nosupport = max(policy["families"]), _errno_action(errno.EAFNOSUPPORT)
    _load_filter(lib, _ALLOW, [(nosupport, "socket", (_ArgCmp(0, _CMP_GT, top, 0),))] + [
        (nosupport, "socket", (_ArgCmp(0, _CMP_EQ, family, 0),))
        for family in range(top) if family not in policy["families"]])
    # Last, like systemd: the allow-list forbids seccomp() itself.
    _load_filter(lib, _errno_action(policy["errno"]), [(_ALLOW, call, ()) for call in policy["allow"]])
    command = argv[argv.index("--") + 1:]
    os.execv(command[0], command)


# Runs as root in a private mount namespace: /proc with the unit's options, the root file system
# read-only except the state directory, then no capabilities and no new privileges.
_MOUNTS = """set -e
mount -t proc -o "$2,nosuid,nodev,noexec" proc /proc
mount --bind "$1" "$1"
mount -o remount,bind,ro /
shift 3
exec setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all --no-new-privs "$@"
"""


@pytest.fixture
def sandboxed(unit, tmp_path):
    """`sandboxed(cmd, state_dir)` -> the command line that runs `cmd` inside the unit's sandbox."""
    if os.geteuid() != 0:
        pytest.skip("the mount namespace needs root (the CI runs as root)")
    for tool in ("unshare", "setpriv", "mount"):
        require_tool(tool, "util-linux")
    assert value(unit, "Service", "ProtectSystem") == "strict" and value(unit, "Service", "CapabilityBoundingSet") == ""
    policy = tmp_path / "seccomp.json"
    policy.write_text(json.dumps(seccomp_policy(unit)))
    proc_options = f"subset={value(unit, 'Service', 'ProcSubset')},hidepid={value(unit, 'Service', 'ProtectProc')}"
    launcher = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                "from test_unit_file import sandbox_exec; sandbox_exec(sys.argv[1:])")

    def command(cmd: list[str], state_dir: Path) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _MOUNTS, "sh",
                str(state_dir), proc_options, "--", sys.executable, "-c", launcher, str(policy), "--", *cmd]

    return command


_PROBE = r"""
import ctypes, json, mmap, os, socket, sys
import numpy as np, cv2
from turbojpeg import TurboJPEG
out = {}
def attempt(name, fn):
    try:
        out[name] = ["ok", fn()]
    except OSError as exc:
        out[name] = ["errno", exc.errno]
attempt("mmap_wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC) and 1)
attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) and 1)
attempt("chroot", lambda: os.chroot("/nonexistent-focoos-edge"))
attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 1))
attempt("write_root", lambda: open("/focoos-edge-probe", "w") and 1)
attempt("write_state", lambda: open(os.path.join(sys.argv[1], "probe"), "w").write("x"))
attempt("cpuinfo", lambda: len(open("/proc/cpuinfo").read()))
attempt("statm", lambda: int(open("/proc/self/statm").read().split()[1]) > 0)
attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[2])), 5).close())
attempt("caps", lambda: [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0])
cmp_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
numbers = (ctypes.c_int * 4)(3, 1, 4, 2)
ctypes.CDLL(None).qsort(numbers, 4, ctypes.sizeof(ctypes.c_int), cmp_t(lambda a, b: a[0] - b[0]))
out["ctypes_callback"] = list(numbers)
jpeg = TurboJPEG().encode(np.full((90, 160, 3), 127, np.uint8), quality=80)
out["jpeg_roundtrip"] = list(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape)
print(json.dumps(out))
"""


def test_sandbox_forbids_what_the_unit_forbids_and_keeps_the_rest(sandboxed, mosquitto, tmp_path):
    """The emulation is real: each restriction bites, while the daemon's own needs still work."""
    state = tmp_path / "state"
    state.mkdir()
    cmd = sandboxed([sys.executable, "-c", _PROBE, str(state), str(mosquitto.port)], state)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["mmap_wx"] == ["errno", errno.EPERM]  # MemoryDenyWriteExecute
    assert got["netlink"] == ["errno", errno.EAFNOSUPPORT]  # RestrictAddressFamilies
    assert got["chroot"] == ["errno", errno.EPERM]  # ~@privileged (ENOENT if it had run)
    assert got["setpriority"] == ["errno", errno.EPERM]  # ~@resources
    assert got["write_root"] == ["errno", errno.EROFS]  # ProtectSystem=strict
    assert got["cpuinfo"] == ["errno", errno.ENOENT]  # ProcSubset=pid
    assert got["caps"] == ["ok", "0000000000000000"]  # CapabilityBoundingSet=
    assert got["write_state"] == ["ok", 1] and got["statm"] == ["ok", True] and got["tcp"] == ["ok", None]
    assert got["ctypes_callback"] == [1, 2, 3, 4]  # libffi closures survive MemoryDenyWriteExecute
    assert got["jpeg_roundtrip"] == [90, 160, 3]
    # The private mount namespace did not leak into the host.
    assert not Path("/focoos-edge-probe").exists() and Path("/proc/cpuinfo").exists()
    assert os.access("/tmp", os.W_OK)


def test_daemon_runs_and_stops_cleanly_under_the_units_sandbox(sandboxed, marker_clip, local_server, mosquitto,
                                                              mqtt_sub, spawn, tmp_path):
    """check-config (ExecStartPre) and run (ExecStart) inside the sandbox: file camera (FFmpeg decode),
    TurboJPEG, HTTP inference, SQLite spool, MQTT, stats (reads /proc/self/statm), SIGTERM -> exit 0."""
    config = daemon_config(tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port, api_key=KEY,
                           cameras=[{"name": "gate", "source": str(marker_clip.path), "sample_fps": 4}])
    state = tmp_path / "state"
    state.mkdir()
    exe = [sys.executable, "-m", "focoos_edge"]
    check = subprocess.run(sandboxed([*exe, "check-config", "-c", str(config)], state),
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    daemon = spawn(sandboxed([*exe, "run", "-c", str(config)], state), name="sandboxed-daemon")
    detections = sub.wait_count(f"{TOPIC}/gate/detections", 3, 60, watch=[daemon])
    assert {d["label"] for d in detections[-1].json()["detections"]} == {"aruco_3", "aruco_17", "aruco_42"}
    stats = sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats", 30, "a stats message", watch=[daemon]).json()
    assert stats["rss_bytes"] > 10_000_000 and stats["cameras"]["gate"]["state"] == "streaming"
    assert (state / "spool.db").exists()
    mark = sub.count
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.describe()
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/availability" and m.payload == "offline", 10, "offline", since=mark)
    stderr = daemon.stderr_text()
    assert "Traceback" not in stderr and "Operation not permitted" not in stderr, stderr

