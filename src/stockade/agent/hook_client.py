"""The fast OCI hook client, in C: on the container start path every millisecond counts, and
a Python interpreter alone costs more than the whole budget. It forwards the OCI state on
stdin to the hook server's Unix socket and exits 0 only on ``OK <recnum>``; anything else (an
``ERR`` answer, garbage, silence, no server, input too large) exits 1 with one line on stderr,
so the runtime does not start the container (fail closed).

Built on first use with gcc (static, stripped) into ``$STOCKADE_HOME/bin``, named by the hash
of its source; where gcc is missing the caller falls back to the Python client.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from stockade.home import stockade_home

SOURCE = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

static int refuse(const char *why, const char *detail) {
  fprintf(stderr, "stockade-oci-hook: refused container: %s%s%s\n", why,
          detail ? ": " : "", detail ? detail : "");
  return 1;
}

int main(int argc, char **argv) {
  static char state[1 << 20];
  static char answer[4096];
  size_t n = 0, m = 0;
  ssize_t r = 0;
  if (argc != 2) return refuse("usage: stockade-oci-hook-client SOCKET", NULL);
  while (n < sizeof state && (r = read(0, state + n, sizeof state - n)) > 0) n += (size_t)r;
  if (r < 0) return refuse("cannot read the container state", strerror(errno));
  if (n == sizeof state) return refuse("the container state is too large", NULL);
  struct sockaddr_un address;
  memset(&address, 0, sizeof address);
  address.sun_family = AF_UNIX;
  if (strlen(argv[1]) >= sizeof address.sun_path) return refuse("socket path too long", argv[1]);
  strcpy(address.sun_path, argv[1]);
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  if (s < 0) return refuse("no socket", strerror(errno));
  struct timeval timeout = {60, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  if (connect(s, (struct sockaddr *)&address, sizeof address) < 0) {
    fprintf(stderr,
            "stockade-oci-hook: refused container: the hook agent at %s cannot be reached "
            "(%s)\n", argv[1], strerror(errno));
    return 1;
  }
  for (size_t done = 0; done < n;) {
    ssize_t w = write(s, state + done, n - done);
    if (w <= 0) return refuse("the hook agent did not take the state", strerror(errno));
    done += (size_t)w;
  }
  shutdown(s, SHUT_WR);
  while (m < sizeof answer - 1 && (r = read(s, answer + m, sizeof answer - 1 - m)) > 0)
    m += (size_t)r;
  if (r < 0) return refuse("no answer from the hook agent", strerror(errno));
  answer[m] = 0;
  while (m && (answer[m - 1] == '\n' || answer[m - 1] == '\r' || answer[m - 1] == ' '))
    answer[--m] = 0;
  if (m > 3 && strncmp(answer, "OK ", 3) == 0) {
    size_t i = 3;
    while (i < m && answer[i] >= '0' && answer[i] <= '9') i++;
    if (i == m) return 0;
  }
  if (strncmp(answer, "ERR ", 4) == 0) {
    fprintf(stderr, "stockade-oci-hook: %s\n", answer + 4);
    return 1;
  }
  fprintf(stderr, "stockade-oci-hook: refused container: the hook agent answered '%.200s'\n",
          answer);
  return 1;
}
"""


class ClientUnavailable(Exception):
    """The C client cannot be built here (no gcc, or it failed)."""


def client_path(directory: Path | None = None) -> Path:
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    return (directory or stockade_home() / "bin") / f"stockade-oci-hook-client-{digest}"


def compiled_client(directory: Path | None = None) -> Path:
    """The built client, compiling it once (atomically) if it is not there yet."""
    target = client_path(directory)
    if target.exists():
        return target
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise ClientUnavailable("no C compiler (gcc) to build the fast hook client")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        source = Path(work) / "client.c"
        source.write_text(SOURCE)
        built = Path(work) / "client"
        done = subprocess.run(
            [compiler, "-O2", "-static", "-s", "-o", str(built), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ClientUnavailable(f"building the fast hook client failed: {done.stderr[-300:]}")
        os.chmod(built, 0o755)
        os.replace(built, target)
    return target
