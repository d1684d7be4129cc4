/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A C twin of the Rust "huge-memfd-v1" handler (handlers/src/hugetlb.rs) whose HugeTLB pools
 * are handed over as the handler's global state (liveupdate_fh_global_state_*), not as an FLB
 * or a subsystem.
 */
#ifndef _LUO_C_HUGE_MEMFD_TWIN_H
#define _LUO_C_HUGE_MEMFD_TWIN_H

#include <linux/liveupdate.h>
#include <linux/luo_ext.h>
#include <linux/kho/abi/hugetlb.h>

enum twin_call {
	TWIN_PRESERVE, TWIN_UNPRESERVE, TWIN_FREEZE, TWIN_UNFREEZE, TWIN_RETRIEVE,
	TWIN_FINISH, TWIN_GS_CREATE, TWIN_GS_RESTORE, TWIN_GS_DESTROY,
	TWIN_NR_CALLS
};

/* Callback counts in the current kernel (reset by huge_twin_register()). */
extern int twin_calls[TWIN_NR_CALLS];
extern struct liveupdate_file_handler huge_twin;

/* One huge page size of the running kernel (what the kernel's hstate counts). */
struct twin_pool {
	unsigned int order;
	u64 total;		/* nr_hugepages */
	u64 free;		/* free huge pages */
	u64 held_incoming;	/* pages of incoming files not yet retrieved or finished */
};

/*
 * Registers the handler and its global state in the current kernel. Call once per boot,
 * before anything else: it resets the kernel's pools and the call counts, as a boot would.
 */
int huge_twin_register(void);

/* Boot-time pool of huge pages of `order` (nr_hugepages); -ENOSPC past HUGETLB_SER_MAX_HSTATES. */
int huge_twin_configure(unsigned int order, u64 nr);
/* Takes nr pages of `order` for a new file (-ENOMEM), or gives them back. */
int huge_twin_alloc(unsigned int order, u64 nr);
void huge_twin_free(unsigned int order, u64 nr);
/* The pool of `order`, zeroed with -ENOENT when the kernel has none. */
int huge_twin_pool(unsigned int order, struct twin_pool *out);

/* The global state's data handle: the physical address of its struct hugetlb_ser. */
int huge_twin_data(u64 *phys);

/*
 * Rewrites the handed-over struct hugetlb_ser from the pools under the global state's lock
 * (what a pool change does while files are preserved). Each call also bumps a counter with
 * a deliberately non-atomic read-yield-write, so lost updates show if get/put did not
 * exclude each other; *syncs receives the counter.
 */
int huge_twin_sync(u64 *syncs);

#endif
