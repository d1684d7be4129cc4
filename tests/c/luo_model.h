/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the Rust LUO core exports for C handlers and C test programs beyond
 * <linux/liveupdate.h>: KHO calls (the generated C API has none), synthetic
 * test files, and a driver for the userspace model (boot, kexec, uAPI).
 *
 * Every call acts on the calling thread's current kernel; errors are -errno.
 */
#ifndef _LUO_MODEL_H
#define _LUO_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <linux/liveupdate.h>
#include <linux/luo_ext.h>

/* KHO: memory is modelled, not mapped; copy bytes in and out by physical address. */
int luo_kho_alloc_preserve(size_t size, u64 *phys);
int luo_kho_unpreserve_free(u64 phys);
int luo_kho_restore_free(u64 phys);
int luo_kho_alloc_folio(unsigned int order, u64 *phys);
int luo_kho_free_folio(u64 phys, unsigned int order);
int luo_kho_preserve_folio(u64 phys, unsigned int order);
int luo_kho_unpreserve_folio(u64 phys, unsigned int order);
int luo_kho_restore_folio(u64 phys, unsigned int *order);
int luo_kho_read(u64 phys, void *buf, size_t len);
int luo_kho_write(u64 phys, const void *buf, size_t len);

/* Synthetic test files: a u64 payload. alloc returns one reference (for retrieve). */
struct file *luo_test_file_alloc(u64 value);
int luo_test_file_value(struct file *file, u64 *value);
unsigned long luo_file_id(struct file *file);

/* Synthetic HugeTLB memfds (the files huge-memfd-v1 handlers preserve): nr huge pages of order. */
struct file *luo_huge_memfd_alloc(unsigned int order, u64 nr);
int luo_huge_memfd_backing(struct file *file, unsigned int *order, u64 *nr);

/* The model driver. */
int luo_model_boot(void);
int luo_model_kexec(void);
int64_t luo_model_liveupdate_num(void);
int luo_model_open_dev(void);
int luo_model_ioctl(int fd, unsigned long cmd, void *arg);
int luo_model_close(int fd);
int luo_model_test_file(u64 value);
int luo_model_test_file_value(int fd, u64 *value);
int luo_model_huge_memfd(unsigned int order, u64 nr);
int luo_model_huge_memfd_backing(int fd, unsigned int *order, u64 *nr);
/* Make the model's kernel current on the calling thread (threads the program starts). */
int luo_model_enter(void);
int64_t luo_model_preserved_pages(void);
void luo_model_shutdown(void);

#endif /* _LUO_MODEL_H */
