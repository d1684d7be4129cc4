// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim: a preserved memfd resized behind the freeze. The freeze holds for the program's own
 * calls, raw syscalls included (EPERM, as on the kernel's frozen inode); a process outside the
 * daemon's supervision (forked before the device was opened) still reaches the host file.
 * argv[1]: 1 = preserve a 5000-byte memfd, have that process grow it to 4 GiB, hold the
 * session (prints the holder's pid); 2 = retrieve it: it has its preserved size and data. */
#include "common.h"
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

/* Forked before the device is opened: waits for an fd number, grows that fd of its parent
 * through /proc to 4 GiB, exits 0 on success. */
static pid_t outsider(int *tell)
{
	int p[2];
	CHECK(pipe(p) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		close(p[1]);
		int fd;
		if (read(p[0], &fd, sizeof(fd)) != sizeof(fd))
			_exit(2);
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)getppid(), fd);
		int f = open(path, O_RDWR);
		_exit(f >= 0 && syscall(SYS_ftruncate, f, 1ULL << 32) == 0 ? 0 : 1);
	}
	close(p[0]);
	*tell = p[1];
	return pid;
}

int main(int argc, char **argv)
{
	int tell = -1;
	pid_t out = argc > 1 && !strcmp(argv[1], "2") ? 0 : outsider(&tell);
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
	FAILS((int)syscall(SYS_ftruncate, m, 1ULL << 32), EPERM);
	CHECK(write(tell, &m, sizeof(m)) == sizeof(m));
	int status;
	CHECK(waitpid(out, &status, 0) == out && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	struct stat st;
	CHECK(fstat(m, &st) == 0 && st.st_size == 1LL << 32);
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
