/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Conformance: a systemd-style client (its LUO fd store: one session named "systemd", token 0 a
 * sealed JSON memfd describing the other fds). After the live update the session fd is found
 * the way systemd recognises one among inherited fds: by scanning /proc/self/fd and reading
 * each link (readlinkat on the directory fd), confirmed with fstatfs.
 */
#include "conf.h"
#include <dirent.h>

#define ANON_INODE_FS_MAGIC 0x09041934
static const char json[] = "{\"fds\":[{\"name\":\"journal\",\"token\":1}]}\n";

/* Scans /proc/self/fd for luo session fds; prints how many and their names. */
static int scan(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d) {
		say("opendir /proc/self/fd: %s", ename(errno));
		return -1;
	}
	int found = -1, n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char link[256];
		ssize_t l = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);
		if (l <= 0)
			continue;
		link[l] = 0;
		if (strncmp(link, "anon_inode:[luo_session] ", 25))
			continue;
		int fd = atoi(e->d_name);
		struct statfs sf;
		n++;
		say("session fd found: name \"%s\", anon_inode_fs %s", link + 25,
		    fstatfs(fd, &sf) == 0 && (unsigned long)sf.f_type == ANON_INODE_FS_MAGIC ? "yes" : "no");
		if (!strcmp(link + 25, "systemd"))
			found = fd;
	}
	closedir(d);
	say("session fds in /proc/self/fd: %d", n);
	return found;
}

int main(void)
{
	int dev = dev_open();
	if (stage() == 1) {
		int s = create_session(dev, "systemd");
		say("create systemd: %s", s >= 0 ? "ok" : ename(errno));
		int m = memfd_create("fdstore", MFD_ALLOW_SEALING | MFD_CLOEXEC);
		say("write json: %s", R(write(m, json, sizeof(json) - 1)));
		say("seal: %s", R(fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)));
		int j = memfd_create("journal", MFD_CLOEXEC);
		fill(j, 42, 10000, 0);
		say("preserve json (token 0): %s", R(preserve_fd(s, m, 0)));
		say("preserve journal (token 1): %s", R(preserve_fd(s, j, 1)));
		scan();
		close(m);
		close(j);
		close(dev);
		hold_sessions(-1);
		return 0;
	}
	int s = retrieve_session(dev, "systemd");
	say("retrieve systemd: %s", s >= 0 ? "ok" : ename(errno));
	int again = scan();
	say("the scan finds the retrieved session: %s", again == s ? "yes" : "no");
	int m = retrieve_fd(s, 0);
	char buf[256] = { 0 };
	ssize_t n = pread(m, buf, sizeof(buf) - 1, 0);
	say("json: %zd bytes, %s", n, strcmp(buf, json) ? "differs" : "as written");
	say("json seals: %s", seals_str(m));
	int j = retrieve_fd(s, 1);
	describe("journal", j);
	say("finish: %s", R(finish(s)));
	return 0;
}
