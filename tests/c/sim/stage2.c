// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim two-stage program, stage 2 (after `luo sim kexec`): retrieve every session and file
 * of stage 1, check size, data and seals, then finish.
 * Usage: stage2 NSESS NFILES */
#include "common.h"

static size_t file_len(int j) { return 100 + (size_t)j * 37 % 9000; }

int main(int argc, char **argv)
{
	CHECK(argc == 3);
	int nsess = atoi(argv[1]), nfiles = atoi(argv[2]);
	raise_nofile();
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0);
	FAILS(retrieve_session(dev, "no-such-session"), ENOENT);
	int *s = calloc(nsess, sizeof(int));
	for (int i = 0; i < nsess; i++) {
		char n[32];
		sprintf(n, "s-%d", i);
		s[i] = retrieve_session(dev, n);
		CHECK(s[i] >= 0);
		FAILS(retrieve_session(dev, n), EINVAL);
		struct liveupdate_session_get_name g = { .size = sizeof(g) };
		CHECK(ioctl(s[i], LIVEUPDATE_SESSION_GET_NAME, &g) == 0);
		CHECK(strcmp((char *)g.name, n) == 0);
	}
	/* An outgoing session may reuse an incoming name. */
	int out = create_session(dev, "s-0");
	CHECK(out >= 0);
	FAILS(finish(out), EINVAL);
	close(out);
	int m = memfd_create("x", 0);
	FAILS(preserve_fd(s[0], m, 1), EINVAL); /* incoming sessions take no files */
	FAILS(retrieve_fd(s[0], 999999), ENOENT);
	for (int j = 0; j < nfiles; j++) {
		int f = retrieve_fd(s[j % nsess], 1000 + j);
		CHECK(f >= 0);
		CHECK(fcntl(f, F_GETFD) & FD_CLOEXEC);
		check_pattern(f, j == 0 ? 4242 : j, file_len(j));
		int seals = fcntl(f, F_GET_SEALS);
		CHECK(seals == (j == 1 ? (F_SEAL_GROW | F_SEAL_SHRINK) : 0));
		int again = retrieve_fd(s[j % nsess], 1000 + j);
		CHECK(again >= 0);
		close(again);
		close(f);
	}
	for (int i = 0; i < nsess; i++) {
		CHECK(finish(s[i]) == 0);
		close(s[i]);
	}
	printf("stage2: ok\n");
	return 0;
}
