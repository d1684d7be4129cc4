// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim two-stage program, stage 1: preserve NFILES memfds over NSESS sessions, then leave a
 * forked child holding the session fds (its pid is printed) and exit.
 * Usage: stage1 NSESS NFILES */
#include "common.h"

static size_t file_len(int j) { return 100 + (size_t)j * 37 % 9000; }

int main(int argc, char **argv)
{
	CHECK(argc == 3);
	int nsess = atoi(argv[1]), nfiles = atoi(argv[2]);
	raise_nofile();
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0);
	int *s = calloc(nsess, sizeof(int));
	for (int i = 0; i < nsess; i++) {
		char n[32];
		sprintf(n, "s-%d", i);
		s[i] = create_session(dev, n);
		CHECK(s[i] >= 0);
	}
	for (int j = 0; j < nfiles; j++) {
		int f = pattern_memfd("stage", j, file_len(j));
		if (j == 1)
			CHECK(fcntl(f, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK) == 0);
		CHECK(preserve_fd(s[j % nsess], f, 1000 + j) == 0);
		if (j == 0) {
			/* Writes after PRESERVE_FD reach the preserved pages. */
			int g = pattern_memfd("tmp", 4242, file_len(0));
			char buf[16384];
			CHECK(pread(g, buf, file_len(0), 0) == (ssize_t)file_len(0));
			CHECK(pwrite(f, buf, file_len(0), 0) == (ssize_t)file_len(0));
			close(g);
		}
		close(f);
	}
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		for (;;)
			pause();
	}
	printf("%d\n", (int)pid);
	return 0;
}
