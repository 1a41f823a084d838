/* The sandbox ("pause") process of every pod on the test node: it holds the pod's namespaces,
 * reaps the zombies of processes that share its PID namespace, and exits on SIGINT/SIGTERM.
 * Built static by .ci/install-node.sh; the test fixture makes it an image in the loopback
 * registry (nothing is pulled from outside). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal_number) {
  (void)signal_number;
  _exit(0);
}

static void reap(int signal_number) {
  (void)signal_number;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

static int handle(int signal_number, void (*handler)(int)) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = handler;
  action.sa_flags = SA_RESTART | (signal_number == SIGCHLD ? SA_NOCLDSTOP : 0);
  sigemptyset(&action.sa_mask);
  return sigaction(signal_number, &action, NULL);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("mlship-test pause 1");
    return 0;
  }
  if (getpid() != 1) {
    fputs("pause: warning: not PID 1, zombies of others are not reaped here\n", stderr);
  }
  if (handle(SIGINT, stop) < 0 || handle(SIGTERM, stop) < 0 || handle(SIGCHLD, reap) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
