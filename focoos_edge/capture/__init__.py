"""Stage 1, the cameras: one thread per camera grabs the freshest frame from an RTSP, USB or file
source, samples it, resizes and JPEG-encodes it (TurboJPEG) into a FrameJob and hands it to the
uplink."""
