// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim: a preserved memfd resized behind the preload's freeze (raw syscalls, which the
 * kernel would refuse: EPERM on a frozen inode). argv[1]: 1 = preserve a 5000-byte memfd,
 * grow it to 4 GiB with a raw ftruncate, hold the session (prints the holder's pid);
 * 2 = retrieve it: it has its preserved size and data. */
#include "common.h"
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0);
	if (argc > 1 && !strcmp(argv[1], "2")) {
		int s = retrieve_session(dev, "grow");
		CHECK(s >= 0);
		int m = retrieve_fd(s, 1);
		CHECK(m >= 0);
		check_pattern(m, 5, 5000);
		CHECK(finish(s) == 0);
		printf("grow: ok\n");
		return 0;
	}
	int s = create_session(dev, "grow");
	CHECK(s >= 0);
	int m = pattern_memfd("grow", 5, 5000);
	CHECK(preserve_fd(s, m, 1) == 0);
	FAILS(ftruncate(m, 1ULL << 32), EPERM);
	CHECK(syscall(SYS_ftruncate, m, 1ULL << 32) == 0);
	pid_t p = fork();
	if (p == 0) {
		close(dev);
		close(0);
		close(1);
		close(2);
		for (;;)
			pause();
	}
	printf("%d\n", (int)p);
	return 0;
}
