/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Known difference (not in the asserted suite): a seal added after PRESERVE_FD.
 * 7.2.13 accepts F_SEAL_GROW on a preserved memfd but records the seals at preserve time, so
 * the retrieved file has none. The simulator hands back the very same host file (no data is
 * copied), whose seals cannot be taken off: it comes back with F_SEAL_GROW.
 * Run: luo vmtest --diff tests/c/conformance/known/late_seal.c
 */
#include "../conf.h"

int main(void)
{
	if (stage() == 1) {
		int dev = dev_open();
		int s = create_session(dev, "k-late");
		int h = memfd_create("late-seal", MFD_ALLOW_SEALING);
		fill(h, 9, 4096, 0);
		say("preserve: %s", R(preserve_fd(s, h, 1)));
		say("add F_SEAL_GROW after preserve: %s", R(fcntl(h, F_ADD_SEALS, F_SEAL_GROW)));
		close(dev);
		hold_sessions(-1);
	} else {
		int dev = dev_open();
		int s = retrieve_session(dev, "k-late");
		int fd = retrieve_fd(s, 1);
		say("retrieved seals: %s", seals_str(fd));
		say("ftruncate grow: %s", R(ftruncate(fd, 8192)));
	}
	return 0;
}
