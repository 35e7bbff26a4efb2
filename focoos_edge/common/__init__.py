"""Small parts every stage uses: backoff delays, secret redaction, sliding-window rates. No I/O,
no imports from the other packages."""
