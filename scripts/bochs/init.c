// PID 1 of the bochs guest built by run_static.sh: runs /prog once with the
// arguments in /args (and environment in /env), both NUL-separated so any byte
// but NUL survives, then reports the status on the serial console and powers off.
// The host script cuts the program's output between the two marker lines.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

// Reads a NUL-separated file into a NULL-terminated vector (first slot reserved
// for argv[0]); a missing file is an empty list.
static char **read_list(const char *path, char *first) {
  char *buf = NULL;
  size_t len = 0, cap = 0;
  FILE *f = fopen(path, "r");
  if (f) {
    for (size_t got; (buf = realloc(buf, cap += 4096)) && (got = fread(buf + len, 1, cap - len, f)) > 0;)
      len += got;
    fclose(f);
  }
  if (buf) buf[len] = '\0';  // fread left room; guards a missing final NUL
  char **v = calloc(len + 2, sizeof *v), **p = v;
  if (first) *p++ = first;
  for (size_t i = 0; i < len; i += strlen(buf + i) + 1) *p++ = buf + i;
  *p = NULL;
  return v;
}

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

int main(void) {
  mkdir("/dev", 0755);
  mkdir("/proc", 0555);
  mkdir("/sys", 0555);
  mkdir("/tmp", 01777);
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);  // EBUSY if the kernel already did it
  mount("proc", "/proc", "proc", 0, NULL);
  mount("sysfs", "/sys", "sysfs", 0, NULL);

  // The kernel may start us without fds when /dev/console is absent from the
  // cpio; open the UART explicitly so the output lands in bochs' com1 file.
  int tty = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
  if (tty < 0) tty = open("/dev/console", O_RDWR | O_NOCTTY);
  if (tty >= 0) {
    struct termios t;
    if (tcgetattr(tty, &t) == 0) {
      t.c_oflag &= ~OPOST;  // no "\n" -> "\r\n": the log then holds the program's bytes
      cfsetospeed(&t, B115200);  // bochs paces the UART by its baud rate
      tcsetattr(tty, TCSANOW, &t);
    }
    dup2(tty, 1);
    dup2(tty, 2);
    if (tty > 2) close(tty);
  }
  int null = open("/dev/null", O_RDONLY);  // a test must never wait on input
  if (null >= 0 && null != 0) { dup2(null, 0); close(null); }

  char **argv = read_list("/args", "/prog");
  char **envp = read_list("/env", NULL);
  say("\nNIBBLE_BOCHS_START\n");
  pid_t pid = fork();
  if (pid == 0) {
    execve("/prog", argv, envp);
    fprintf(stderr, "init: exec /prog: %s\n", strerror(errno));
    _exit(127);
  }
  int status = 0, code;
  if (pid < 0) {
    status = -1;
  } else {
    // As PID 1 we also inherit orphans; only /prog's own status counts.
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
  }
  char line[160];
  if (pid < 0) {
    code = 126;
  } else if (WIFSIGNALED(status)) {
    code = 128 + WTERMSIG(status);  // the shell's convention
    snprintf(line, sizeof line, "\nNIBBLE_BOCHS_SIGNAL=%d (%s)\n", WTERMSIG(status),
             strsignal(WTERMSIG(status)));
    say(line);
  } else {
    code = WEXITSTATUS(status);
  }
  snprintf(line, sizeof line, "\nNIBBLE_BOCHS_EXIT=%d\n", code);
  say(line);
  tcdrain(1);  // power-off would drop what is still in the UART queue
  sync();
  reboot(RB_POWER_OFF);
  for (;;) pause();  // if ACPI power-off failed, the host kills bochs on the exit line
}
