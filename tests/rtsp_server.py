#!/usr/bin/python3
"""A small RTSP camera for the tests, built on GStreamer's RTSP server.

Run it with Debian's ``/usr/bin/python3``: the GObject bindings (python3-gi,
gir1.2-gst-rtsp-server-1.0) live there, not in the project's venv.

Two sources, both H.264 over RTP, mounted at ``--mount`` (default ``/cam``):

* ``--pattern ball`` (default): a live ``videotestsrc`` encoded by x264 as it is served.
* ``--clip PATH``: a pre-encoded MP4 (H.264 without B-frames) served without re-encoding
  and looped forever, so long tests never see end-of-stream. The clip is read by a private
  "feeder" pipeline paced by its own clock (``appsink sync=true``) that seeks back to 0 on
  EOS; its access units are pushed into the served media's ``appsrc``, which stamps them
  with the media's running time, so timestamps stay monotonic across loops.

``--user``/``--password`` enable RTSP basic authentication. The script prints ``READY``
on stdout once the server listens, and exits with status 0 on SIGTERM or SIGINT
(2 on a bad argument or a port that cannot be bound).
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

EXIT_USAGE = 2


def parse_args(argv):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern name")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--clip", default=None, help="MP4 file to serve in a loop")
    parser.add_argument("--user", default=None)
    parser.add_argument("--password", default=None)
    args = parser.parse_args(argv)
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    return args


def pattern_launch(args):
    """Launch line that encodes a live test pattern for each shared media."""
    return (
        f"( videotestsrc is-live=true pattern={args.pattern} "
        f"! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


# do-timestamp: buffers get the media's running time when they leave the appsrc, which
# keeps timestamps monotonic whatever the feeder does (it restarts at 0 on every loop).
CLIP_LAUNCH = (
    "( appsrc name=clipsrc is-live=true format=time do-timestamp=true "
    "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)


class ClipFeeder:
    """Reads an MP4 in real time, forever, and pushes its H.264 access units into an appsrc."""

    def __init__(self, clip_path, appsrc):
        self._appsrc = appsrc
        self._caps_set = False
        location = clip_path.replace("\\", "\\\\").replace('"', '\\"')
        # config-interval=-1: SPS/PPS before every IDR, so a client may join at any keyframe.
        self._pipeline = Gst.parse_launch(
            f'filesrc location="{location}" ! qtdemux ! h264parse config-interval=-1 '
            "! video/x-h264,stream-format=byte-stream,alignment=au "
            "! appsink name=sink sync=true emit-signals=true max-buffers=4"
        )
        self._pipeline.get_by_name("sink").connect("new-sample", self._on_sample)
        bus = self._pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self._on_message)

    def start(self):
        """Start reading; called on the appsrc's first need-data."""
        self._pipeline.set_state(Gst.State.PLAYING)

    def stop(self):
        """Stop reading and release the file."""
        bus = self._pipeline.get_bus()
        bus.remove_signal_watch()
        self._pipeline.set_state(Gst.State.NULL)

    def _on_sample(self, sink):
        sample = sink.emit("pull-sample")
        if not self._caps_set:
            self._appsrc.set_property("caps", sample.get_caps())
            self._caps_set = True
        buf = sample.get_buffer().copy()
        # Cleared so that the appsrc's do-timestamp applies the media's own clock.
        buf.pts = Gst.CLOCK_TIME_NONE
        buf.dts = Gst.CLOCK_TIME_NONE
        buf.duration = Gst.CLOCK_TIME_NONE
        self._appsrc.emit("push-buffer", buf)
        return Gst.FlowReturn.OK

    def _on_message(self, _bus, message):
        if message.type == Gst.MessageType.EOS:
            self._pipeline.seek_simple(
                Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0
            )
        elif message.type == Gst.MessageType.ERROR:
            err, _debug = message.parse_error()
            print(f"clip feeder error: {err.message}", file=sys.stderr, flush=True)


def attach_clip_feeder(clip_path):
    """media-configure handler: one feeder per media, started on demand, stopped with it."""

    def on_configure(_factory, media):
        appsrc = media.get_element().get_by_name("clipsrc")
        feeder = ClipFeeder(clip_path, appsrc)
        started = []

        def on_need_data(_src, _length):
            if not started:
                started.append(True)
                feeder.start()

        appsrc.connect("need-data", on_need_data)
        media.connect("unprepared", lambda _media: feeder.stop())

    return on_configure


def add_basic_auth(server, factory, user, password):
    """Require basic authentication with one user allowed to open the mount."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera-user")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    role = Gst.Structure.new_empty("camera-user")
    role.set_value(GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    role.set_value(GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
    factory.add_role_from_structure(role)


def build_server(args):
    """Create the server, its factory and (optionally) its authentication."""
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    # Shared: every client sees one stream (and the pattern is encoded once).
    factory.set_shared(True)
    if args.clip:
        factory.set_launch(CLIP_LAUNCH)
        factory.connect("media-configure", attach_clip_feeder(args.clip))
    else:
        factory.set_launch(pattern_launch(args))
    server.get_mount_points().add_factory(args.mount, factory)
    if args.user is not None:
        add_basic_auth(server, factory, args.user, args.password)
    return server


def main(argv=None):
    """Serve until SIGTERM/SIGINT."""
    args = parse_args(argv)
    Gst.init(None)
    loop = GLib.MainLoop()
    server = build_server(args)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, loop.quit)
    print("READY", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
