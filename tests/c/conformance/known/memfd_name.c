/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Known difference (not in the asserted suite): the name of a retrieved memfd.
 * 7.2.13's retrieve creates a new file with an empty name (memfd_alloc_file("") in
 * mm/memfd_luo.c): /proc/self/fd/N reads "/ (deleted)", not "/memfd:NAME (deleted)". The
 * simulator hands back the program's own host memfd, which keeps its name.
 * Run: luo vmtest --diff tests/c/conformance/known/memfd_name.c
 */
#include "../conf.h"

int main(void)
{
	int dev = dev_open();
	if (stage() == 1) {
		int s = create_session(dev, "k-name");
		int m = memfd_create("named", 0);
		fill(m, 1, 10, 0);
		say("preserve: %s", R(preserve_fd(s, m, 1)));
		close(dev);
		hold_sessions(-1);
	} else {
		int s = retrieve_session(dev, "k-name");
		int fd = retrieve_fd(s, 1);
		char path[64], link[256];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		link[n > 0 ? n : 0] = 0;
		say("retrieved memfd reads as \"%s\"", link);
	}
	return 0;
}
