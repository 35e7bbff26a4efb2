"""`probe --out` writes camera frames safely (issue 12, finding 5): never through a planted symlink,
never world-readable, never into a folder another user owns. Real CLI, real files and symlinks."""

from __future__ import annotations

import os
import stat

import media
import pytest
from httpfault import closed_port
from test_cli import API_KEY, probe_config, run_cli

OTHER_UID = 65534  # nobody


@pytest.fixture(scope="module")
def clip(ffmpeg_tool, tmp_path_factory):
    return media.make_test_clip(tmp_path_factory.mktemp("probe-media") / "c.mp4", 320, 240, 10, 3)


def probe(tmp_path, local_server, clip, out):
    config = probe_config(tmp_path, local_server.url, API_KEY, closed_port(),
                          [{"name": "cam", "source": f"file://{clip}"}])
    return run_cli("probe", "-c", str(config), "--out", str(out))


def test_probe_replaces_a_planted_symlink_instead_of_following_it(tmp_path, local_server, clip):
    secret = tmp_path / "root-only"
    secret.write_bytes(b"do not overwrite")
    secret.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cam.jpg").symlink_to(secret)
    done = probe(tmp_path, local_server, clip, out)
    assert "camera cam: ok" in done.stdout, (done.stdout, done.stderr)
    assert secret.read_bytes() == b"do not overwrite"
    st = os.lstat(out / "cam.jpg")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (out / "cam.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert sorted(p.name for p in out.iterdir()) == ["cam.jpg"]  # no temporary file left behind


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (the case the issue found)")
def test_probe_refuses_a_folder_another_user_owns(tmp_path, local_server, clip):
    out = tmp_path / "theirs"
    out.mkdir()
    os.chown(out, OTHER_UID, OTHER_UID)
    done = probe(tmp_path, local_server, clip, out)
    assert done.returncode == 1
    assert "belongs to another user" in done.stdout, done.stdout
    assert list(out.iterdir()) == []
