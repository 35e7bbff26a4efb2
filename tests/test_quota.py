"""Quota awareness with the real daemon and the local server's metered account."""

from __future__ import annotations

import httpfault
import pytest
from daemon_infra import KEY, TOPIC, daemon_command, daemon_config, stop_daemon

from focoos_edge.inference.errors import MalformedResponseError
from focoos_edge.inference.quota import QuotaWatch, parse_account
from focoos_edge.tools.account import Quota
from focoos_edge.tools.localserver import LocalServer


def test_quota_exhausted_spools_frames_and_publishes_them_after_the_reset(
        marker_clip, mosquitto, mqtt_sub, spawn, tmp_path):
    server = LocalServer(port=0, api_key=KEY, quota=Quota(1000, 1000))
    server.start()
    try:
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        config = daemon_config(tmp_path, api_url=server.url, mqtt_port=mosquitto.port,
                               inference={"quota_check_interval_s": 1},
                               cameras=[{"name": "cam", "source": f"file://{marker_clip.path}", "sample_fps": 4}])
        daemon = spawn(daemon_command(config), name="daemon")
        state = sub.wait_for(lambda m: m.topic == f"{TOPIC}/inference" and m.json()["state"] == "quota_exhausted",
                             30, "quota_exhausted").json()
        stats = sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and m.json()["cameras"]["cam"]["spooled"] >= 4,
                             30, "frames spooled").json()
        refused = server.stats.requests
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and m.json()["cameras"]["cam"]["spooled"] >= 8, 30,
                     "more frames spooled")
        # No retry storm: while exhausted only the account is re-read (one GET user/ a second here).
        assert server.stats.requests - refused <= 8
        assert not sub.messages(f"{TOPIC}/cam/detections")
        server.quota.reset()
        replayed = sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections" and m.json()["replayed"], 60,
                                "a spooled frame published after the reset").json()
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/inference" and m.json()["state"] == "ok", 30, "ok again")
        final = stop_daemon(daemon, sub)
    finally:
        server.stop()
    assert "1000 of 1000" in state["detail"]
    assert stats["quota"]["total_inferences"] == stats["quota"]["max_inferences"] == 1000
    assert len(replayed["detections"]) == 3
    assert final["cameras"]["cam"]["dead_lettered"] == final["cameras"]["cam"]["evicted"] == 0
    assert "local@localhost" not in daemon.stderr_text() and "local-key-not-shown" not in daemon.stderr_text()


def test_a_missing_account_endpoint_leaves_the_quota_unknown() -> None:
    from focoos_edge.inference.client import FocoosClient

    with httpfault.FaultServer() as srv:
        srv.default = httpfault.json(404, {"detail": "Not Found"})
        client = FocoosClient(srv.url, "k")
        watch = QuotaWatch(client.account_quota, interval_s=600)
        assert watch.refresh_if_due() and watch.last is None and not watch.exhausted()
        assert not watch.refresh_if_due()  # never more often than the interval
        client.close()
        assert [r.path for r in srv.requests] == ["/v0/user/"]


@pytest.mark.parametrize("body", [b"[]", b'{"quotas": {"total_inferences": "many"}}', b"nope"])
def test_odd_account_replies_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedResponseError):
        parse_account(body)


def test_account_quota_reads_only_the_numbers() -> None:
    quota = parse_account(b'{"email": "a@b.c", "quotas": {"total_inferences": 950, "max_inferences": 1000}}', 0.0)
    assert (quota.total_inferences, quota.max_inferences, quota.low, quota.exhausted) == (950, 1000, True, False)
    assert "a@b.c" not in repr(quota)
