"""Commands that are not the daemon: probe, demo, the local Focoos-compatible server (and its ArUco
"model"). Submodules import OpenCV: import them where a command runs, not here, so `--help` stays light.
"""

LOCAL_SERVER_PORT = 8501  # the Focoos SDK's own "local" URL is http://localhost:8501/v0
LOCAL_SERVER_KEY_ENV = "FOCOOS_LOCAL_API_KEY"
LOCAL_SERVER_IM_SIZE = 640  # the local models' im_size unless --im-size says otherwise

__all__ = ["LOCAL_SERVER_IM_SIZE", "LOCAL_SERVER_KEY_ENV", "LOCAL_SERVER_PORT"]
