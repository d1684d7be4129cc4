/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the C test drivers share: the /dev/liveupdate calls, made through the model's ioctl
 * (luo_model_ioctl) with the uAPI structs of the generated <linux/liveupdate.h> exactly as a
 * caller of the real device fills them, and a CHECK that counts a failure and goes on, so
 * one run reports every broken expectation.
 */
#ifndef LUO_MODEL_UAPI_H
#define LUO_MODEL_UAPI_H

#include <stdio.h>
#include <string.h>

#include "luo_model.h"

static int failures;

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
				__LINE__, #cond);                              \
			failures++;                                            \
		}                                                              \
	} while (0)

/* LIVEUPDATE_IOCTL_CREATE_SESSION: the session fd, or -errno. */
static inline int create_session(int dev, const char *name)
{
	struct liveupdate_ioctl_create_session a;
	int r;

	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	strncpy((char *)a.name, name, sizeof(a.name) - 1);
	r = luo_model_ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &a);
	return r ? r : a.fd;
}

/* LIVEUPDATE_IOCTL_RETRIEVE_SESSION: the session fd, or -errno. */
static inline int retrieve_session(int dev, const char *name)
{
	struct liveupdate_ioctl_retrieve_session a;
	int r;

	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	strncpy((char *)a.name, name, sizeof(a.name) - 1);
	r = luo_model_ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &a);
	return r ? r : a.fd;
}

/* LIVEUPDATE_SESSION_PRESERVE_FD: 0 or -errno. */
static inline int preserve(int session, int fd, u64 token)
{
	struct liveupdate_session_preserve_fd a = { sizeof(a), fd, token };

	return luo_model_ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &a);
}

/* LIVEUPDATE_SESSION_RETRIEVE_FD: the file's fd, or -errno. */
static inline int retrieve_fd(int session, u64 token)
{
	struct liveupdate_session_retrieve_fd a = { sizeof(a), -1, token };
	int r = luo_model_ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &a);

	return r ? r : a.fd;
}

/* LIVEUPDATE_SESSION_FINISH: 0 or -errno. */
static inline int finish(int session)
{
	struct liveupdate_session_finish a = { sizeof(a), 0 };

	return luo_model_ioctl(session, LIVEUPDATE_SESSION_FINISH, &a);
}

#endif /* LUO_MODEL_UAPI_H */
