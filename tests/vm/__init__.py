"""A throw-away Debian 12 VM (qemu TCG) and container base made with mmdebstrap, for the tests
that need a real systemd or a real image. Everything is cached under ~/.cache/focoos-edge-tests."""
