"""Command line: the only place that prints for people and picks exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from focoos_edge import __version__

EX_OK = 0
EX_FATAL = 1
EX_CONFIG = 78  # sysexits.h EX_CONFIG: systemd units use it to tell "fix the config" from crashes
DEFAULT_CONFIG = "/etc/focoos-edge/config.yaml"

log = logging.getLogger("focoos_edge")


def install_signal_handlers(stop: threading.Event, reload: threading.Event | None = None) -> None:
    """SIGTERM/SIGINT set `stop`; a second SIGINT exits at once (like uvicorn); SIGHUP sets `reload`."""

    def on_signal(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            os.write(2, b"second interrupt: exiting now\n")
            os._exit(EX_FATAL)
        log.info("received %s, shutting down (Ctrl+C again to force)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if reload is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())


def log_thread_crashes() -> None:
    """An exception that ends a thread goes through logging (redacted), not raw to stderr."""

    def hook(args: threading.ExceptHookArgs) -> None:
        log.critical("thread %s crashed", args.thread.name if args.thread else "?",
                     exc_info=args.exc_value or True)

    threading.excepthook = hook


def _load(path: str):
    """Load the config or print its errors; returns (config, exit code)."""
    from focoos_edge.config import ConfigError, load_config

    try:
        return load_config(path), EX_OK
    except ConfigError as exc:
        print(f"focoos-edge: invalid config {path}:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return None, EX_CONFIG


def cmd_run(args) -> int:
    from focoos_edge.common import tune_malloc

    tune_malloc()  # first: the config's imports and every thread allocate with the daemon's settings
    config, rc = _load(args.config)
    if config is None:
        return rc
    from focoos_edge.capture import EncoderUnavailableError
    from focoos_edge.delivery import SpoolError, TlsConfigError
    from focoos_edge.service import Daemon, StateDirError, setup_logging

    redactor = setup_logging(args.log_level or config.log_level, config.secrets())
    log_thread_crashes()
    stop, reload = threading.Event(), threading.Event()
    install_signal_handlers(stop, reload)

    def add_secrets(secrets):
        for secret in secrets:
            redactor.add(secret)

    try:
        daemon = Daemon(config, stop, config_path=args.config, reload=reload, on_secrets=add_secrets)
    except (SpoolError, StateDirError, TlsConfigError) as exc:
        log.critical("%s", exc)
        return EX_FATAL
    except OSError as exc:  # the state_dir lock file (read-only filesystem, permissions)
        log.critical("state_dir %s: %s", config.state_dir, exc)
        return EX_FATAL
    try:
        daemon.run()
    except EncoderUnavailableError as exc:
        log.critical("%s", exc)
        return EX_FATAL
    except Exception:  # logged through the redacting handler: a raw traceback could carry secrets
        log.critical("fatal error", exc_info=True)
        return EX_FATAL
    return EX_OK


def cmd_check_config(args) -> int:
    config, rc = _load(args.config)
    if config is None:
        return rc
    import yaml

    print(f"# {args.config}: valid (secrets shown as ***)")
    print(yaml.safe_dump(config.redacted(), sort_keys=False), end="")
    return EX_OK


def cmd_schema(args) -> int:
    from focoos_edge.config import config_json_schema

    print(json.dumps(config_json_schema(), indent=2))
    return EX_OK


def cmd_schemas(args) -> int:
    from focoos_edge.delivery import contract

    try:
        out = contract.schema(args.name) if args.name else contract.schemas()
    except contract.SchemaNotFoundError:
        print(f"focoos-edge: no schema named {args.name!r} (have: {', '.join(contract.SCHEMA_NAMES)})",
              file=sys.stderr)
        return EX_FATAL
    print(json.dumps(out, indent=2))
    return EX_OK


def cmd_probe(args) -> int:
    config, rc = _load(args.config)
    if config is None:
        return rc
    from focoos_edge.service import setup_logging
    from focoos_edge.tools.probe import run_probe

    setup_logging("warning", config.secrets())
    return run_probe(config, camera=args.camera, out_dir=args.out, print_fn=print)


def cmd_local_server(args) -> int:
    from focoos_edge.service import setup_logging
    from focoos_edge.tools import localserver

    setup_logging(args.log_level or "info", [k for k in [args.api_key] if k])
    stop = threading.Event()
    install_signal_handlers(stop)
    return localserver.run_from_args(args, stop)


def cmd_demo(args) -> int:
    from focoos_edge.service import setup_logging
    from focoos_edge.tools.demo import run_demo

    setup_logging(args.log_level or "warning")
    stop = threading.Event()
    install_signal_handlers(stop)
    return run_demo(args, stop)


def cmd_reload(args) -> int:
    from focoos_edge.common import request_reload  # the standard library only: quick even in a slow VM

    try:
        return request_reload(args.pid, args.timeout)
    except ProcessLookupError:
        print(f"focoos-edge: no process {args.pid}", file=sys.stderr)
        return EX_FATAL


def add_local_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``local-server`` options (here, not in the server's module: `--help` must not load OpenCV)."""
    from focoos_edge.tools import LOCAL_SERVER_IM_SIZE, LOCAL_SERVER_KEY_ENV, LOCAL_SERVER_PORT

    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=LOCAL_SERVER_PORT,
                        help=f"port (default {LOCAL_SERVER_PORT}; 0 = any free)")
    parser.add_argument("--api-key", default=None,
                        help=f"the only key accepted (prefer the {LOCAL_SERVER_KEY_ENV} environment variable: "
                             "command lines are visible to other users); if unset any non-blank key works")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="extra delay before each inference reply, to simulate a cloud round trip")
    parser.add_argument("--quota", default=None, metavar="USED:MAX",
                        help="inference quota of the account (GET user/); inference past it is refused (429)")
    parser.add_argument("--im-size", type=int, default=LOCAL_SERVER_IM_SIZE,
                        help=f"the models' im_size in their info (default {LOCAL_SERVER_IM_SIZE})")


LOG_LEVELS = ["debug", "info", "warning", "error"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focoos-edge",
        description="Edge agent: cameras -> TurboJPEG -> Focoos HUB inference -> MQTT.",
        epilog="Exit codes: 0 clean stop, 78 bad config, 1 other fatal errors. Docs: README.md.")
    parser.add_argument("--version", action="version", version=f"focoos-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _daemon_commands(sub)
    _tool_commands(sub)
    return parser


def _with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"YAML config file (default {DEFAULT_CONFIG})")
    return p


def _daemon_commands(sub) -> None:
    """run, check-config, probe, reload: the commands that act on a box's config or its daemon."""
    p = _with_config(sub.add_parser("run", help="run the daemon in the foreground"))
    p.add_argument("--log-level", choices=LOG_LEVELS, help="override the config's log_level")
    p.set_defaults(func=cmd_run)
    p = _with_config(sub.add_parser("check-config", help="validate the config and print it, secrets redacted"))
    p.set_defaults(func=cmd_check_config)
    p = _with_config(sub.add_parser(
        "probe", help="open each camera (codec, size, fps, one saved JPEG), check the model and the broker"))
    p.add_argument("--camera", help="probe only this camera")
    p.add_argument("--out", default=".", help="folder for the saved JPEGs (default: current folder)")
    p.set_defaults(func=cmd_probe)
    p = sub.add_parser("reload", help="SIGHUP the daemon and wait for its answer (the unit's ExecReload)")
    p.add_argument("--pid", type=int, required=True, help="the daemon's process id ($MAINPID)")
    p.add_argument("--timeout", type=float, default=75.0, help="seconds to wait for the answer (default 75)")
    p.set_defaults(func=cmd_reload)


def _tool_commands(sub) -> None:
    """local-server, demo, schema, schemas: tools that need no box."""
    p = sub.add_parser("local-server", help="a Focoos-compatible inference server with a CPU ArUco detector")
    add_local_server_arguments(p)
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.set_defaults(func=cmd_local_server)
    p = sub.add_parser("demo", help="the whole pipeline on this machine: no camera, no cloud account")
    p.add_argument("--seconds", type=float, default=0,
                   help="stop after this many seconds (default: run until Ctrl+C)")
    p.add_argument("--workdir", help="folder for the demo clip, config and state (default: a temp folder)")
    p.add_argument("--mqtt-port", type=int, default=0,
                   help="use the broker on 127.0.0.1:PORT instead of starting one")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("schema", help="print the JSON Schema of the config file")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("schemas", help="print the JSON Schemas of the MQTT payloads (all, or one by name)")
    p.add_argument("name", nargs="?", help="detections, camera_state, inference_state, stats, availability, ...")
    p.set_defaults(func=cmd_schemas)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EX_FATAL
