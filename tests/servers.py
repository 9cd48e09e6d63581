"""Waiting for the servers the tests start (MLflow, the edgesearch UI) to answer."""

import time
import urllib.request


def wait_until_healthy(url: str, proc, timeout: float = 90.0) -> None:
    """Return once ``url``/health answers OK; kill ``proc`` and fail if it does not within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"the server at {url} did not come up within {timeout:g} s")
