"""Secret redaction: URL forms, free text, and the logging filter on real loggers and handlers."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from focoos_edge.common.redact import RedactingFilter, SecretRegistry, redact_text, redact_url, url_secrets

CANARY = "CANARY-7f3a9c"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter22@10.0.0.1:554/stream1", "rtsp://***@10.0.0.1:554/stream1"),
        ("rtsp://admin@10.0.0.1/stream1", "rtsp://***@10.0.0.1/stream1"),
        ("rtsp://ad.min%40x:p@ss:w0rd@10.0.0.1/", "rtsp://***@10.0.0.1/"),
        ("rtsps://u:p%2Fw@cam.local:322/s?x=1", "rtsps://***@cam.local:322/s?x=1"),
        ("rtsp://u:pw@[::1]:8554/cam", "rtsp://***@[::1]:8554/cam"),
        ("http://h/v?token=abc&x=1&API_KEY=z", "http://h/v?token=***&x=1&API_KEY=***"),
        ("https://h/v?pwd=1&passwd=2&pass=3&key=4&apikey=5&secret=6&auth=7&password=8",
         "https://h/v?pwd=***&passwd=***&pass=***&key=***&apikey=***&secret=***&auth=***&password=***"),
        ("http://u:p@h:8080/mjpg?user=bob", "http://***@h:8080/mjpg?user=bob"),
        ("rtsp://10.0.0.1/stream?channel=1", "rtsp://10.0.0.1/stream?channel=1"),
        ("https://api.focoos.ai/v0", "https://api.focoos.ai/v0"),
        ("usb:0", "usb:0"),
        ("/dev/video0", "/dev/video0"),
        ("/srv/clips/a b#1.mp4", "/srv/clips/a b#1.mp4"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_never_raises_on_unparsable_input() -> None:
    # urlsplit raises "Invalid IPv6 URL" here; the regex fallback still masks the user info.
    assert redact_url(f"http://u:{CANARY}@[::1/x") == "http://***@[::1/x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("opening rtsp://ad.min%40x:p@ss:w0rd@10.0.0.1/ failed", "opening rtsp://***@10.0.0.1/ failed"),
        ("a 'http://bob:pw@h/x' and rtsps://u@h2/y", "a 'http://***@h/x' and rtsps://***@h2/y"),
        ("password=hunter22 user=bob", "password=*** user=bob"),
        ("mqtt_password=hunter22, retry", "mqtt_password=***, retry"),
        ("api_key: 'abc123' model: m", "api_key: '***' model: m"),
        ("{'token': \"xyz\", 'n': 1}", "{'token': \"***\", 'n': 1}"),
        ("GET /v0/models?apikey=zzz&x=1", "GET /v0/models?apikey=***&x=1"),
        ("X-API-Key: abc123\r\nAccept: */*", "X-API-Key: ***\r\nAccept: */*"),
        ("{'X-API-Key': 'abc123', 'Accept': '*/*'}", "{'X-API-Key': '***', 'Accept': '*/*'}"),
        ("Authorization: Bearer tok.123\nnext line", "Authorization: ***\nnext line"),
        ("sent Bearer abc.def-ghi to h", "sent Bearer *** to h"),
        # Words that merely contain or precede the secret names stay readable.
        ("unknown key 'h'; KeyError: 'x'; passed 3", "unknown key 'h'; KeyError: 'x'; passed 3"),
        ("monkey=3 authority=x", "monkey=3 authority=x"),
    ],
)
def test_redact_text_patterns(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_text_literal_secrets() -> None:
    assert redact_text(f"key is {CANARY}!", [CANARY]) == "key is ***!"
    # Too short to redact safely: "abc" would also mask "abc" inside innocent words.
    assert redact_text("abc and abcd", ["abc", "", "abcd"]) == "abc and ***"
    # Longest first, so a secret that contains another is masked whole.
    assert redact_text("xabcdefx", ["abcd", "abcdef"]) == "x***x"


def test_url_secrets() -> None:
    assert url_secrets("rtsp://u:p%40ss@h/") == ["p%40ss", "p@ss"]
    assert url_secrets("rtsp://u:plain@h/") == ["plain"]
    assert url_secrets("rtsp://u@h/") == []
    assert url_secrets("usb:0") == []
    assert url_secrets("http://u:p@[::1/") == []
    assert url_secrets(None) == []


@pytest.fixture
def capture_log():
    """A real logger hierarchy with a real StreamHandler (writing to a StringIO) and the filter."""
    parent = logging.getLogger("redact_test")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    redactor = RedactingFilter([CANARY])
    handler.addFilter(redactor)
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    yield parent, stream, redactor
    parent.removeHandler(handler)
    parent.propagate = True


def test_filter_redacts_message_args_of_a_child_logger(capture_log) -> None:
    parent, stream, _ = capture_log
    # A child logger (like urllib3.connectionpool) has no filter of its own: the handler's covers it.
    child = logging.getLogger("redact_test.thirdparty")
    child.debug("Starting new HTTP connection (1): %s", f"rtsp://viewer:{CANARY}@127.0.0.1:8554/cam")
    child.info("%(url)s", {"url": "http://bob:pw1234@127.0.0.1/x?token=t0k3n"})
    out = stream.getvalue()
    assert CANARY not in out and "pw1234" not in out and "t0k3n" not in out
    assert "DEBUG redact_test.thirdparty Starting new HTTP connection (1): rtsp://***@127.0.0.1:8554/cam" in out
    assert "http://***@127.0.0.1/x?token=***" in out


def test_filter_redacts_exception_traceback(capture_log) -> None:
    parent, stream, _ = capture_log
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keeper = Keep()
    parent.addHandler(keeper)
    try:
        try:
            raise RuntimeError(f"auth failed for key {CANARY}")
        except RuntimeError:
            parent.exception("inference failed")
    finally:
        parent.removeHandler(keeper)
    out = stream.getvalue()
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: auth failed for key ***" in out
    assert CANARY not in out
    # exc_info is kept (handlers still know there was an exception), exc_text is the redacted one,
    # and a fresh standard Formatter renders that text, never the raw traceback.
    (record,) = records
    assert record.exc_info is not None and CANARY not in record.exc_text
    assert CANARY not in logging.Formatter().format(record)


def test_filter_redacts_stack_info(capture_log) -> None:
    parent, stream, _ = capture_log
    parent.warning("where am I", stack_info=True)  # CANARY-7f3a9c: this source line is in the stack
    out = stream.getvalue()
    assert "Stack (most recent call last)" in out and "test_filter_redacts_stack_info" in out
    assert CANARY not in out and "# ***: this source line" in out


def test_filter_survives_bad_format_args(capture_log) -> None:
    parent, stream, _ = capture_log
    parent.warning("%d frames from %s", "many", f"rtsp://u:{CANARY}@h/")
    out = stream.getvalue()
    assert "message could not be formatted" in out and CANARY not in out


def test_filter_add_later_and_second_handler(capture_log) -> None:
    parent, stream, redactor = capture_log
    other = io.StringIO()
    second = logging.StreamHandler(other)
    second.addFilter(RedactingFilter(redactor.registry))  # shares the registry
    parent.addHandler(second)
    try:
        redactor.add("late-secret-42")
        parent.error("got late-secret-42 and %s", CANARY)
    finally:
        parent.removeHandler(second)
    for out in (stream.getvalue(), other.getvalue()):
        assert "late-secret-42" not in out and CANARY not in out
        assert "got *** and ***" in out


def test_registry_add_is_thread_safe() -> None:
    registry = SecretRegistry()
    threads = [
        threading.Thread(target=lambda t=t: [registry.add(f"secret-{t}-{i}") for i in range(300)])
        for t in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(registry.snapshot()) == 8 * 300
    registry.add(None)
    registry.add("abc")
    assert len(registry.snapshot()) == 8 * 300
    assert registry.redact("x secret-7-299 y") == "x *** y"
