// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim: a program under the freeze supervision (it opened /dev/liveupdate) starts another
 * daemon, which inherits the filter: it must refuse to serve (its own writes would wait for
 * itself) instead of hanging. argv[1]: the daemon binary, argv[2]: a socket path. Prints the
 * daemon's exit status. */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	CHECK(argc == 3);
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0);
	pid_t p = fork();
	CHECK(p >= 0);
	if (p == 0) {
		unsetenv("LD_PRELOAD");
		execl(argv[1], argv[1], "serve", "--socket", argv[2], (char *)NULL);
		_exit(127);
	}
	int status;
	for (int i = 0; i < 1000; i++) {
		if (waitpid(p, &status, WNOHANG) == p) {
			printf("daemon exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
			return 0;
		}
		usleep(10000);
	}
	kill(p, SIGKILL);
	waitpid(p, &status, 0);
	printf("daemon still serving after 10 s\n");
	return 0;
}
