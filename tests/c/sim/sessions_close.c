// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim: sessions with preserved memfds opened and closed, in one of three ways
 * (argv[1]): "close" (outgoing session closed: unpreserve), "refused" (preserves that fail:
 * EEXIST, EBUSY), "hold" (stage 1: sessions kept by a child over a kexec, whose pid is
 * printed) and "retrieve" (stage 2: every file retrieved twice, the session finished and
 * closed). The daemon must end each with the descriptors it started with. */
#include "common.h"

int main(int argc, char **argv)
{
	const char *how = argc > 1 ? argv[1] : "close";
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0);
	if (!strcmp(how, "retrieve")) {
		int s = retrieve_session(dev, "keep");
		CHECK(s >= 0);
		for (int t = 0; t < 3; t++) {
			int a = retrieve_fd(s, t), b = retrieve_fd(s, t);
			CHECK(a >= 0 && b >= 0);
			check_pattern(a, t, 5000);
			close(a);
			close(b);
		}
		CHECK(finish(s) == 0);
		close(s);
		close(dev);
		printf("retrieve: ok\n");
		return 0;
	}
	int s = create_session(dev, !strcmp(how, "hold") ? "keep" : "tmp");
	CHECK(s >= 0);
	for (int t = 0; t < 3; t++) {
		int m = pattern_memfd("m", t, 5000);
		CHECK(preserve_fd(s, m, t) == 0);
		if (!strcmp(how, "refused")) {
			int other = pattern_memfd("o", 9, 10);
			FAILS(preserve_fd(s, other, t), EEXIST);
			FAILS(preserve_fd(s, m, 100 + t), EBUSY);
			close(other);
		}
		close(m);
	}
	if (!strcmp(how, "hold")) {
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
		return 0; /* the child holds the session */
	}
	close(s);
	close(dev);
	printf("%s: ok\n", how);
	return 0;
}
