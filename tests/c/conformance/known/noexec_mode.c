/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Known difference (not in the asserted suite): the mode of a retrieved MFD_NOEXEC_SEAL memfd.
 * 7.2.13 creates the new file with the exec bits (0777) and re-applies F_SEAL_EXEC; the
 * simulator's file is the program's own host memfd, created 0666 by MFD_NOEXEC_SEAL, whose
 * F_SEAL_EXEC forbids changing the mode back. (The seals agree: F_SEAL_EXEC on the 0777 file
 * implies the write seals, which the simulator adds; memfd.c checks them.)
 * Run: luo vmtest --diff tests/c/conformance/known/noexec_mode.c
 */
#include "../conf.h"

int main(void)
{
	if (stage() == 1) {
		int dev = dev_open();
		int s = create_session(dev, "k-noexec");
		int h = memfd_create("noexec", MFD_NOEXEC_SEAL);
		fill(h, 3, 100, 0);
		say("preserve: %s", R(preserve_fd(s, h, 1)));
		close(dev);
		hold_sessions(-1);
	} else {
		int dev = dev_open();
		int s = retrieve_session(dev, "k-noexec");
		int fd = retrieve_fd(s, 1);
		struct stat st;
		fstat(fd, &st);
		say("retrieved mode %o", st.st_mode & 07777);
	}
	return 0;
}
