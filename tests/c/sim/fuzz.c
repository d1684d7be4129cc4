// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* luo-sim fuzzing client: N random ioctls (random command, fd, size, contents and pointers)
 * on /dev/liveupdate and session fds. Only survival matters. Usage: fuzz N SEED */
#include "common.h"

static unsigned long long rng;
static unsigned rnd(void)
{
	rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return (unsigned)(rng >> 33);
}

int main(int argc, char **argv)
{
	CHECK(argc == 3);
	int n = atoi(argv[1]);
	rng = strtoull(argv[2], 0, 0);
	raise_nofile();
	int dev = open("/dev/liveupdate", O_RDWR);
	CHECK(dev >= 0);
	int fds[64], nf = 0;
	fds[nf++] = dev;
	int s = create_session(dev, "fuzz");
	CHECK(s >= 0);
	fds[nf++] = s;
	unsigned char buf[256];
	for (int i = 0; i < n; i++) {
		unsigned cmd = rnd() % 4 ? 0xBA00 | (rnd() % 8 < 6 ? (rnd() % 2 ? 0 : 0x40) + rnd() % 5 : rnd() % 256)
					 : rnd();
		int fd = fds[rnd() % nf];
		for (size_t k = 0; k < sizeof(buf); k++)
			buf[k] = rnd() % 3 ? 0 : rnd();
		unsigned sizes[] = { 0, 4, 8, 16, 72, 73, 200, 5000, rnd() };
		unsigned size = sizes[rnd() % 9];
		memcpy(buf, &size, 4);
		if (rnd() % 3 == 0) {
			int mf = memfd_create("fz", 0);
			memcpy(buf + 4, &mf, 4);
			ioctl(fd, cmd, buf);
			close(mf);
		} else {
			void *arg = rnd() % 10 ? (void *)buf : (void *)(unsigned long)(rnd() % 4096);
			ioctl(fd, cmd, arg);
		}
		int got;
		memcpy(&got, buf + 4, 4);
		if (got > 2 && got < 60000 && nf < 64 && fcntl(got, F_GETFD) >= 0 && rnd() % 2)
			fds[nf++] = got;
		if (nf > 40) {
			for (int k = 2; k < nf; k++)
				close(fds[k]);
			nf = 2;
		}
	}
	printf("fuzz: survived %d calls\n", n);
	return 0;
}
