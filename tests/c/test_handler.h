/* SPDX-License-Identifier: GPL-2.0 */
/* A file handler written in C, with an FLB, handler global state and a subsystem. */
#ifndef _LUO_C_TEST_HANDLER_H
#define _LUO_C_TEST_HANDLER_H

#include <linux/liveupdate.h>
#include <linux/luo_ext.h>

enum c_call {
	C_PRESERVE, C_UNPRESERVE, C_FREEZE, C_UNFREEZE, C_RETRIEVE, C_CAN_FINISH,
	C_FINISH, C_FLB_PRESERVE, C_FLB_UNPRESERVE, C_FLB_RETRIEVE, C_FLB_FINISH,
	C_GS_CREATE, C_GS_RESTORE, C_GS_DESTROY, C_SUB_BOOT, C_SUB_FINISH,
	C_NR_CALLS
};

extern int c_calls[C_NR_CALLS];
extern u64 c_sub_boot_data;
extern struct liveupdate_file_handler c_handler;
extern struct liveupdate_flb c_flb;
extern struct liveupdate_subsystem c_subsys;

/* Registers the handler, links the FLB, attaches global state, registers the subsystem. */
int c_test_register(void);

#endif
