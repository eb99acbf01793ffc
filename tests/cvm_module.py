"""A real CVM module for the auth/auth_cvm_unix_local tests: Debian's cvm-pwfile on a unix socket.

`cvm_pwfile(directory, users)` starts `cvm-pwfile cvm-local:<directory>/cvm.sock`
with a passwd-format file of `users` ({name: password}, clear text, which
cvm-pwfile compares as is) and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from server_process import stop_process, wait_until_ready

CVM_PWFILE = shutil.which("cvm-pwfile") or "/usr/bin/cvm-pwfile"
AVAILABLE = os.access(CVM_PWFILE, os.X_OK)


@contextlib.contextmanager
def cvm_pwfile(directory: Path, users: dict[str, str]) -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    passwd = directory / "passwd"
    passwd.write_text("".join(f"{name}:{password}:1000:1000:{name}:/home/{name}:/bin/sh\n"
                              for name, password in users.items()))
    socket_path = directory / "cvm.sock"
    process = subprocess.Popen([CVM_PWFILE, f"cvm-local:{socket_path}"], env={"CVM_PWFILE_PATH": str(passwd)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(process, socket_path.exists, "cvm-pwfile", interval=0.02)
        yield socket_path
    finally:
        stop_process(process)
