/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * What the preload's two parts share (preload.c: the interposed calls and the daemon
 * protocol; supervise.c: the seccomp supervision). Hidden: a preload library must export
 * only the calls it interposes.
 */
#ifndef LUO_SIM_PRELOAD_H
#define LUO_SIM_PRELOAD_H

#include <stddef.h>
#include <sys/types.h>

#define LUO_HIDDEN __attribute__((visibility("hidden")))

#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#endif

/* Sends one request (with `fd` passed when >= 0): 0, or -errno. */
LUO_HIDDEN int send_pkt(int sock, const void *buf, size_t len, int fd);
/* Receives one reply: its length, or -errno; *fd gets a passed descriptor or -1. */
LUO_HIDDEN ssize_t recv_pkt(int sock, void *buf, size_t len, int *fd);
/* Installs the seccomp filter (once per process tree) and hands its listener to the daemon
 * behind the device connection `dev`. */
LUO_HIDDEN void supervise(int dev);

#endif
