// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* Without a daemon there is no /dev/liveupdate: ENOENT, and other files open normally. */
#include "common.h"

int main(void)
{
	FAILS(open("/dev/liveupdate", O_RDWR), ENOENT);
	int fd = open("/dev/null", O_RDONLY);
	CHECK(fd >= 0);
	return 0;
}
