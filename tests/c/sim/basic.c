// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim: the single-boot behaviours of /dev/liveupdate (run under LD_PRELOAD). */
#include "common.h"

int main(void)
{
	raise_nofile();
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0);
	/* Exclusive open. */
	FAILS(open("/dev/liveupdate", O_RDWR), EBUSY);
	FAILS(openat(AT_FDCWD, "/dev/liveupdate", O_RDWR), EBUSY);

	/* Sessions: distinct, duplicate, bad names. */
	int a = create_session(dev, "alpha");
	CHECK(a >= 0);
	CHECK(fcntl(a, F_GETFD) & FD_CLOEXEC);
	int b = create_session(dev, "beta");
	CHECK(b >= 0 && b != a);
	FAILS(create_session(dev, "alpha"), EEXIST);
	FAILS(create_session(dev, ""), EINVAL);
	{
		struct liveupdate_ioctl_create_session c = { .size = sizeof(c) };
		memset(c.name, 'x', sizeof(c.name)); /* no NUL */
		FAILS(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &c), EINVAL);
	}

	/* GET_NAME. */
	{
		struct liveupdate_session_get_name g = { .size = sizeof(g) };
		CHECK(ioctl(a, LIVEUPDATE_SESSION_GET_NAME, &g) == 0);
		CHECK(strcmp((char *)g.name, "alpha") == 0);
		g.reserved = 1;
		FAILS(ioctl(a, LIVEUPDATE_SESSION_GET_NAME, &g), EINVAL);
	}

	/* Size rules: too small, larger with zero tail, larger with nonzero tail, bad pointer. */
	{
		struct { struct liveupdate_ioctl_create_session s; char tail[32]; } big;
		memset(&big, 0, sizeof(big));
		big.s.size = sizeof(big);
		strcpy((char *)big.s.name, "gamma");
		CHECK(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &big) == 0);
		CHECK(big.s.fd >= 0);
		close(big.s.fd);
		big.s.fd = 0;
		strcpy((char *)big.s.name, "delta");
		big.tail[5] = 1;
		FAILS(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &big), E2BIG);
		big.tail[5] = 0;
		big.s.size = 71;
		FAILS(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &big), EINVAL);
		FAILS(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, (void *)8), EFAULT);
		struct liveupdate_session_finish f = { .size = 4 };
		FAILS(ioctl(a, LIVEUPDATE_SESSION_FINISH, &f), EINVAL);
	}
	/* Direction rules: unknown nr, wrong command value, wrong fd kind, wrong session kind. */
	{
		struct liveupdate_session_finish f = { .size = sizeof(f) };
		FAILS(ioctl(dev, _IO(LIVEUPDATE_IOCTL_TYPE, 0x05), &f), EINVAL);
		FAILS(ioctl(dev, _IOW(LIVEUPDATE_IOCTL_TYPE, 0x00, int), &f), ENOTTY);
		FAILS(ioctl(dev, LIVEUPDATE_SESSION_FINISH, &f), EINVAL);
		FAILS(ioctl(a, LIVEUPDATE_IOCTL_CREATE_SESSION, &f), EINVAL);
		FAILS(ioctl(a, LIVEUPDATE_SESSION_FINISH, &f), EINVAL); /* outgoing session */
		FAILS(retrieve_fd(a, 1), EINVAL);
	}

	/* Preserve: memfd, token reuse, double preservation, unsupported and bad fds. */
	int m = pattern_memfd("data", 7, 10000);
	CHECK(preserve_fd(a, m, 1) == 0);
	FAILS(preserve_fd(a, m, 1), EEXIST);
	FAILS(preserve_fd(a, m, 2), EBUSY);
	FAILS(preserve_fd(b, m, 1), EBUSY);
	int dup_m = dup(m);
	FAILS(preserve_fd(b, dup_m, 9), EBUSY);
	close(dup_m);
	int null = open("/dev/null", O_RDWR);
	CHECK(null >= 0);
	FAILS(preserve_fd(b, null, 3), ENOENT);
	FAILS(preserve_fd(b, a, 3), ENOENT);
	FAILS(preserve_fd(b, 9999, 3), EBADF);
	int m2 = pattern_memfd("other", 8, 100);
	CHECK(preserve_fd(b, m2, 1) == 0); /* same token, another session */
	close(m2);

	/* Close semantics: the last close of a session unpreserves its files. */
	int a2 = dup(a);
	close(a);
	FAILS(preserve_fd(b, m, 5), EBUSY); /* a is still open through a2 */
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* The child's copy keeps the session alive after the parent closes its own. */
		sleep(1);
		_exit(0);
	}
	close(a2);
	FAILS(preserve_fd(b, m, 5), EBUSY); /* the child still holds it */
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(preserve_fd(b, m, 5) == 0); /* the last close unpreserved it */
	a = create_session(dev, "alpha"); /* and freed the name */
	CHECK(a >= 0);

	/* Closing /dev/liveupdate keeps sessions; reopening works. */
	close(dev);
	dev = open("/dev/liveupdate", O_RDWR);
	CHECK(dev >= 0);
	FAILS(create_session(dev, "beta"), EEXIST);

	/* Many sessions and files. */
	for (int i = 0; i < 200; i++) {
		char n[32];
		sprintf(n, "many-%d", i);
		int s = create_session(dev, n);
		CHECK(s >= 0);
		for (int j = 0; j < 3; j++) {
			int f = pattern_memfd("f", i * 3 + j, 64);
			CHECK(preserve_fd(s, f, j) == 0);
			close(f);
		}
		close(s);
	}
	/* Other ioctls still reach the kernel. */
	FAILS(ioctl(null, LIVEUPDATE_IOCTL_CREATE_SESSION, 0), ENOTTY);
	printf("basic: ok\n");
	return 0;
}
