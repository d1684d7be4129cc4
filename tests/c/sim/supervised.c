// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim: a process under the daemon's freeze supervision (it opened /dev/liveupdate) that
 * lives on across a simulated kexec: its calls the filter forwards (a write to an fd above 2)
 * are still answered by the next daemon. Prints "ready", waits for a line on stdin (the test
 * runs `luo sim kexec` meanwhile), then writes a file and a pipe and prints "after: ok". */
#include "common.h"
#include <sys/syscall.h>

int main(void)
{
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0);
	printf("ready\n");
	fflush(stdout);
	char line[16];
	CHECK(read(0, line, sizeof(line)) > 0);
	int p[2];
	CHECK(pipe(p) == 0);
	CHECK(p[1] > 2);
	CHECK(syscall(SYS_write, p[1], "after", 5) == 5);
	int m = memfd_create("scratch", 0);
	CHECK(m > 2);
	CHECK(ftruncate(m, 4096) == 0);
	CHECK(pwrite(m, "x", 1, 8192) == 1);
	printf("after: ok\n");
	return 0;
}
