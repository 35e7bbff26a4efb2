"""scripts/install.sh into a throwaway root (`--root DIR --no-apt`): the real venv with the real
dependencies from pip, installed twice (idempotent), then uninstalled and purged.

The install is the slow part (a venv plus opencv/numpy wheels, from pip's cache or index when
warm: 10-30 s); the module installs once and the tests share that tree. The last test uninstalls it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from focoos_edge import __version__
from focoos_edge.config.models import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install.sh"
# Debian's interpreter, as on a real box (scripts/setup.sh installs python3-venv).
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
INSTALL_TIMEOUT_S = 600


def run_script(root: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True,
                            timeout=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def tree(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of everything under root (symlinks not followed)."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")}


class Installed:
    def __init__(self, root: Path):
        self.root = root
        self.etc = root / "etc/focoos-edge"
        self.venv = root / "opt/focoos-edge/venv"
        self.unit = root / "etc/systemd/system/focoos-edge.service"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """Installed twice; the config is edited between the runs. Records both trees and outputs."""
    root = tmp_path_factory.mktemp("root")
    source_entries = sorted(os.listdir(ROOT))
    inst = Installed(root)
    inst.first_output = run_script(root, "--no-apt", "--python", PYTHON).stdout
    inst.first_tree = tree(root)
    inst.config_text = (inst.etc / "config.yaml").read_text()
    (inst.etc / "config.yaml").write_text(inst.config_text + "# edited by the operator\n")
    inst.second_output = run_script(root, "--no-apt", "--python", PYTHON).stdout
    inst.second_tree = tree(root)
    inst.source_entries_after = sorted(os.listdir(ROOT))
    inst.source_entries_before = source_entries
    return inst


def test_layout_and_modes(installed):
    modes = installed.first_tree
    expected = {
        "etc/systemd/system/focoos-edge.service": 0o644,
        "etc/focoos-edge": 0o755,
        "etc/focoos-edge/config.yaml": 0o644,  # read by the dynamic user: no secrets in it
        "etc/focoos-edge/environment": 0o600,
        "etc/focoos-edge/credentials": 0o700,
        "etc/focoos-edge/credentials/README": 0o644,
        "opt/focoos-edge/doc/operations.md": 0o644,
        "opt/focoos-edge/doc/config.example.yaml": 0o644,
        "opt/focoos-edge/venv/bin/focoos-edge": 0o755,
    }
    assert {path: modes.get(path) for path in expected} == expected
    assert installed.unit.read_text() == (ROOT / "systemd/focoos-edge.service").read_text()
    assert not [p for p in modes if p.startswith("etc/focoos-edge/credentials/") and not p.endswith("README")]
    assert not [p for p in modes if p.startswith("var/")]  # the state directory is systemd's to make
    readme = (installed.etc / "credentials/README").read_text()
    assert "focoos_api_key" in readme and "mqtt_password" in readme


def test_second_run_is_idempotent_and_keeps_the_config(installed):
    assert installed.second_tree == installed.first_tree
    assert (installed.etc / "config.yaml").read_text() == installed.config_text + "# edited by the operator\n"
    assert "keeping" in installed.second_output and "wrote" not in installed.second_output
    assert "skipped systemctl" in installed.first_output  # a --root install never touches systemd


def test_the_source_tree_is_left_clean(installed):
    """pip builds from a copy: no build/ or egg-info appears in the checkout."""
    assert installed.source_entries_after == installed.source_entries_before


def test_the_venv_runs(installed):
    result = subprocess.run([str(installed.venv / "bin/focoos-edge"), "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"focoos-edge {__version__}"
    imports = subprocess.run([str(installed.venv / "bin/python"), "-c",
                              "import cv2, numpy, turbojpeg, paho.mqtt, pydantic; turbojpeg.TurboJPEG()"],
                             capture_output=True, text=True, timeout=60)
    assert imports.returncode == 0, imports.stderr


def test_installed_config_reads_the_key_from_the_credential(installed, tmp_path):
    """The example, with its API key moved to the credential, is a valid config under systemd."""
    example = (ROOT / "config.example.yaml").read_text().splitlines()
    written = installed.config_text.splitlines()
    changed = [(a, b) for a, b in zip(example, written, strict=False) if a != b]
    assert len(example) == len(written) and len(changed) == 1, changed
    assert changed[0][1].strip().startswith("api_key_file: focoos_api_key")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "focoos_api_key").write_text("fk-test-0123456789\n")
    config = load_config(installed.etc / "config.yaml", environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.inference.api_key_value == "fk-test-0123456789"
    check = subprocess.run([str(installed.venv / "bin/focoos-edge"), "check-config", "-c",
                            str(installed.etc / "config.yaml")], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)})
    assert check.returncode == 0, check.stderr
    assert "fk-test-0123456789" not in check.stdout + check.stderr


def test_check_config_by_hand_after_install_finds_the_units_credentials_folder(installed):
    """install.sh's "next:" lines, run as written: check-config without systemd's
    $CREDENTIALS_DIRECTORY reads the key from /etc/focoos-edge/credentials (what LoadCredential= reads),
    and before the key is written says exactly what to run."""
    assert "sudo install -m 0600 /dev/stdin" in installed.first_output
    command = [str(installed.venv / "bin/focoos-edge"), "check-config", "-c", str(installed.etc / "config.yaml")]
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    key = installed.etc / "credentials/focoos_api_key"
    before = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert before.returncode == 78
    assert f"write it with: sudo install -m 0600 /dev/stdin {key}\n" in before.stderr, before.stderr
    key.write_text("fk-by-hand-0123456789\n")
    try:
        after = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    finally:
        key.unlink()
    assert after.returncode == 0, after.stderr
    assert "fk-by-hand-0123456789" not in after.stdout + after.stderr


def test_usage_errors_exit_2(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--root", str(tmp_path), "--bogus"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "unknown option --bogus" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_uninstall_keeps_config_and_state_then_purge_removes_all(installed):
    """Runs last (it removes the shared tree)."""
    root = installed.root
    state = root / "var/lib/private/focoos-edge"  # what DynamicUser's StateDirectory= leaves
    state.mkdir(parents=True)
    (state / "spool.db").write_bytes(b"spooled frames")
    (root / "var/lib/focoos-edge").symlink_to("private/focoos-edge")
    dropin = root / "etc/systemd/system/focoos-edge.service.d"
    dropin.mkdir()
    (dropin / "local.conf").write_text("[Service]\nPrivateDevices=yes\n")

    run_script(root, "--uninstall")
    left = set(tree(root))
    assert not installed.unit.exists() and not (root / "opt/focoos-edge").exists()
    assert (installed.etc / "config.yaml").read_text().endswith("# edited by the operator\n")
    assert {"etc/focoos-edge/credentials", "etc/focoos-edge/environment"} <= left
    assert (state / "spool.db").read_bytes() == b"spooled frames"
    assert (dropin / "local.conf").exists()  # the operator's drop-in stays until --purge
    run_script(root, "--uninstall")  # twice is fine

    run_script(root, "--purge")
    assert not installed.etc.exists() and not state.exists() and not (root / "var/lib/focoos-edge").is_symlink()
    assert not dropin.exists()
    assert not [p for p in tree(root) if "focoos" in p], tree(root)
    shutil.rmtree(root)


def test_check_config_as_a_non_root_user_says_to_use_sudo():
    """The credentials folder is root-only (0700): a user's check-config says so instead of crashing
    (Path.is_file raised PermissionError inside it)."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to a user")
    if subprocess.run([*nobody, sys.executable, "-c", "import focoos_edge"], capture_output=True,
                      cwd="/", timeout=60).returncode != 0:
        pytest.skip("this checkout is not readable by an unprivileged user")
    folder = Path(tempfile.mkdtemp(prefix="focoos-cc-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        (folder / "credentials").mkdir(mode=0o700)
        (folder / "credentials/focoos_api_key").write_text("fk-root-only-0123\n")
        (folder / "config.yaml").write_text("inference:\n  api_key_file: focoos_api_key\n")
        (folder / "config.yaml").chmod(0o644)
        result = subprocess.run([*nobody, sys.executable, "-m", "focoos_edge", "check-config", "-c",
                                 str(folder / "config.yaml")], capture_output=True, text=True, timeout=60,
                                cwd="/", env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 78, result.stderr
    assert f"{folder}/credentials is readable by root only, run check-config with sudo" in result.stderr
    assert "Traceback" not in result.stderr and "fk-root-only" not in result.stderr
