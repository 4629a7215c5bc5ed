#!/usr/bin/python3
"""Serve QEMU's own C vhost-user-gpu backend with vhost-user-mali's CLI.

    ci/reference-backend.py --socket-path PATH [--log-level LEVEL]

QEMU's /usr/lib/qemu/vhost-user-gpu (Debian package qemu-system-gui)
accepts a single connection and exits, leaving its socket file behind. This
wrapper owns the listening socket instead: it accepts one connection at a
time and hands each to a fresh backend process through `--fd`, so it serves
connection after connection like the real daemon. That lets ci/e2e.sh be
exercised without vhost-user-mali:

    ci/e2e.sh --daemon ci/reference-backend.py

The C backend runs in 2D mode and announces no capsets, so the guest probe's
DRM capset check fails by design; everything before it must pass.

SIGTERM (or SIGINT) stops the backend in service and removes the socket.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys

BACKEND = "/usr/lib/qemu/vhost-user-gpu"


def log(msg):
    print(f"reference-backend: {msg}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket-path", required=True)
    # Accepted for CLI compatibility with vhost-user-mali; not used.
    parser.add_argument("--log-level")
    args = parser.parse_args()

    if not os.access(BACKEND, os.X_OK):
        log(f"{BACKEND} not found: install qemu-system-gui from bookworm-backports")
        return 1

    # A stale socket from an earlier run would make bind() fail.
    try:
        os.unlink(args.socket_path)
    except FileNotFoundError:
        pass

    # Turn SIGTERM into an exception so the cleanup below runs.
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    backend = None
    try:
        listener.bind(args.socket_path)
        listener.listen(1)
        log(f"listening on {args.socket_path}")
        connection = 0
        while True:
            conn, _ = listener.accept()
            connection += 1
            # The listener is close-on-exec; only the connection is passed.
            backend = subprocess.Popen(
                [BACKEND, f"--fd={conn.fileno()}"], pass_fds=[conn.fileno()]
            )
            conn.close()
            log(f"connection {connection}: backend pid {backend.pid}")
            rc = backend.wait()
            backend = None
            log(f"connection {connection}: backend exited with status {rc}")
    except SystemExit:
        log("stopping")
        return 0
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait()
        listener.close()
        try:
            os.unlink(args.socket_path)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    sys.exit(main())
