/*
 * stockade-oci-hook-client: the fast OCI hook. On the container start path every millisecond
 * counts, and a Python interpreter alone costs more than the whole budget.
 *
 *     stockade-oci-hook-client SOCKET [TIMEOUT_SECONDS]
 *
 * Forwards the OCI state on stdin (at most 1 MiB) to the hook server's Unix socket SOCKET,
 * then exits 0 only on the answer "OK <digits>". Anything else (an "ERR <reason>" answer,
 * garbage, silence for TIMEOUT_SECONDS (default and maximum 60) on any socket operation, no
 * server, a state too large, bad usage) exits 1 with exactly one line on stderr, so the
 * runtime does not start the container: it fails closed.
 *
 * stockade/agent/hook_fallback_client.py is the same program in Python, for nodes without
 * this binary; the two give the same exit code and the same stderr byte for byte
 * (tests/runtime/test_oci_hook_fast_client.py). Change both or neither.
 *
 * Built at install time, never on a node at first use: `make hook-client` (which `make test`
 * and `make demo` run) compiles it static and stripped into .venv/bin with the Makefile's
 * HOOK_CFLAGS (C11, -Wall -Wextra -Wpedantic -Wformat=2 -Wconversion as errors,
 * -D_FORTIFY_SOURCE=2, gcc's -fanalyzer); `make lint` checks it with the same flags. The agent
 * looks for it in $STOCKADE_HOOK_CLIENT, beside its interpreter, on PATH, then in
 * /usr/lib/stockade (stockade/agent/hook_client.py).
 */

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_STATE_BYTES ((size_t)1 << 20)
#define MAX_ANSWER_BYTES ((size_t)4096)
#define MAX_SHOWN_ANSWER_BYTES ((size_t)200)
#define DEFAULT_TIMEOUT_SECONDS 60L

static char state[MAX_STATE_BYTES + 1];
static char answer[MAX_ANSWER_BYTES];

/* The one stderr line, built whole and written at once. */
static char line[2 * MAX_ANSWER_BYTES];
static size_t line_length;

/* Appends text; control bytes become '?' so that the line stays one line. */
static void put(const char *text, size_t length) {
  for (size_t i = 0; i < length && line_length < sizeof line - 1; i++) {
    unsigned char c = (unsigned char)text[i];
    line[line_length++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
  }
}

static void put_text(const char *text) { put(text, strlen(text)); }

/* What went wrong with a system call: "timed out" for a socket timeout (the errors Python
 * raises as BlockingIOError), else strerror. */
static const char *failure(int error) {
  if (error == EAGAIN || error == EWOULDBLOCK || error == EALREADY || error == EINPROGRESS)
    return "timed out";
  return strerror(error);
}

static int finish(void) {
  line[line_length++] = '\n';
  for (size_t done = 0; done < line_length;) {
    ssize_t written = write(STDERR_FILENO, line + done, line_length - done);
    if (written <= 0) break;
    done += (size_t)written;
  }
  return 1;
}

/* "stockade-oci-hook: refused container: WHY[: DETAIL]" (DETAIL if not empty); exit status 1. */
static int refuse(const char *why, const char *detail) {
  put_text("stockade-oci-hook: refused container: ");
  put_text(why);
  if (detail != NULL && *detail != '\0') {
    put_text(": ");
    put_text(detail);
  }
  return finish();
}

/* 1..60 from decimal digits only, else 0. */
static long timeout_seconds(const char *text) {
  long value = 0;
  if (*text == '\0') return 0;
  for (; *text != '\0'; text++) {
    if (*text < '0' || *text > '9') return 0;
    value = value * 10 + (*text - '0');
    if (value > DEFAULT_TIMEOUT_SECONDS) return 0;
  }
  return value;
}

static int is_digits(const char *text, size_t length) {
  if (length == 0) return 0;
  for (size_t i = 0; i < length; i++)
    if (text[i] < '0' || text[i] > '9') return 0;
  return 1;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Sends the state to the server at address (path) and judges its answer. */
static int ask(int sock, const struct sockaddr_un *address, const char *path, size_t size) {
  if (connect(sock, (const struct sockaddr *)address, sizeof *address) != 0) {
    const char *why = failure(errno);
    put_text("stockade-oci-hook: refused container: the hook agent at ");
    put_text(path);
    put_text(" cannot be reached (");
    put_text(why);
    put_text(")");
    return finish();
  }
  for (size_t done = 0; done < size;) {
    ssize_t sent = send(sock, state + done, size - done, MSG_NOSIGNAL);
    if (sent < 0) return refuse("the hook agent did not take the state", failure(errno));
    done += (size_t)sent;
  }
  if (shutdown(sock, SHUT_WR) != 0)
    return refuse("the hook agent did not take the state", failure(errno));

  size_t length = 0;
  while (length < sizeof answer) {
    ssize_t got = recv(sock, answer + length, sizeof answer - length, 0);
    if (got < 0) return refuse("no answer from the hook agent", failure(errno));
    if (got == 0) break;
    length += (size_t)got;
  }
  while (length > 0 && is_space(answer[length - 1])) length--;

  if (length > 3 && memcmp(answer, "OK ", 3) == 0 && is_digits(answer + 3, length - 3)) return 0;
  if (length > 4 && memcmp(answer, "ERR ", 4) == 0) {
    put_text("stockade-oci-hook: ");
    put(answer + 4, length - 4);
    return finish();
  }
  put_text("stockade-oci-hook: refused container: the hook agent answered '");
  put(answer, length < MAX_SHOWN_ANSWER_BYTES ? length : MAX_SHOWN_ANSWER_BYTES);
  put_text("'");
  return finish();
}

int main(int argc, char **argv) {
  long seconds = DEFAULT_TIMEOUT_SECONDS;
  if (argc == 3) seconds = timeout_seconds(argv[2]);
  if ((argc != 2 && argc != 3) || seconds == 0)
    return refuse("usage: stockade-oci-hook-client SOCKET [TIMEOUT_SECONDS]", NULL);
  const char *path = argv[1];
  size_t path_length = strlen(path);
  struct sockaddr_un address;
  memset(&address, 0, sizeof address);
  address.sun_family = AF_UNIX;
  if (path_length == 0 || path_length >= sizeof address.sun_path)
    return refuse("bad socket path", path);
  memcpy(address.sun_path, path, path_length);

  size_t size = 0;
  while (size < sizeof state) {
    ssize_t got = read(STDIN_FILENO, state + size, sizeof state - size);
    if (got < 0) return refuse("cannot read the container state", failure(errno));
    if (got == 0) break;
    size += (size_t)got;
  }
  if (size > MAX_STATE_BYTES) return refuse("the container state on stdin is too large", NULL);

  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return refuse("cannot open a socket", failure(errno));
  struct timeval timeout = {.tv_sec = seconds, .tv_usec = 0};
  if (setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0 ||
      setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0) {
    int error = errno;
    close(sock);
    return refuse("cannot set the socket timeout", failure(error));
  }
  int status = ask(sock, &address, path, size);
  close(sock);
  return status;
}
