// SPDX-License-Identifier: MIT OR GPL-2.0
//
// Keystone syscall observer: counts the system calls made by one process
// (every thread of one thread group), per thread and per syscall number.
// Loaded and attached by crates/keystone-ebpf (observer.rs) only when the
// server runs with --observe; rebuild the committed object with
// `cargo xtask build-ebpf`.
//
// Attach point: the raw tracepoint `sys_enter` (BPF_PROG_TYPE_RAW_TRACEPOINT),
// the same event as the tracepoint raw_syscalls/sys_enter but attached by
// name through bpf(BPF_RAW_TRACEPOINT_OPEN): it needs no tracefs mounted
// (hosts often have none) and skips the perf buffer the classic tracepoint
// fills. Its arguments are those of the kernel's trace_sys_enter(regs, id):
// args[0] is the struct pt_regs * of the syscall, args[1] its number.
//
// Which tasks count: those whose thread group id (the "pid" user space
// sees) equals config[CONFIG_TARGET_TGID]. io_uring's io-wq workers
// (iou-wrk-*) and SQPOLL thread (iou-sqp-*) are threads of the submitting
// process since Linux 5.12, so they match too; they rarely enter syscalls.
//
// Self-contained: linux/bpf.h (linux-libc-dev) and bpf/bpf_helpers.h
// (libbpf-dev), no vmlinux.h and no architecture-specific layout, so the
// object is the same for every architecture.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Keep in sync with keystone_ebpf::observer::THREADS_MAX: distinct threads
// counted. A worker per core plus io-wq threads is far below; threads past
// it are counted in `untracked` instead (and by number, as always).
#define THREADS_MAX 1024

// Keep in sync with keystone_ebpf::observer::SYSCALL_NUMBERS_MAX: slots of
// `by_number`, indexed by syscall number. x86_64 and the generic table end
// below 470 on Linux 6.x; numbers at or above it go to `untracked`.
#define SYSCALL_NUMBERS_MAX 512

// Slot of `config` holding the thread group id to observe; 0 (unset)
// observes nothing.
#define CONFIG_TARGET_TGID 0
#define CONFIG_SLOTS 1

// Slots of `untracked`.
#define UNTRACKED_THREAD 0 // The `by_thread` table was full.
#define UNTRACKED_NUMBER 1 // Syscall number outside [0, SYSCALL_NUMBERS_MAX).
#define UNTRACKED_SLOTS 2

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CONFIG_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

// by_thread[tid] = syscalls entered by that thread since attach. A thread
// runs on one CPU at a time, but it migrates, so the add is atomic.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, THREADS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} by_thread SEC(".maps");

// by_number[nr] = syscalls with number nr, per CPU so the hot path never
// contends on a shared line; user space sums the CPUs.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYSCALL_NUMBERS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} by_number SEC(".maps");

// Syscalls a table could not hold (see UNTRACKED_*), per CPU.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UNTRACKED_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} untracked SEC(".maps");

static __always_inline void count_untracked(__u32 slot)
{
	__u64 *count = bpf_map_lookup_elem(&untracked, &slot);
	if (count)
		*count += 1; // Per-CPU slot: no atomic needed.
}

static __always_inline void count_thread(__u32 tid)
{
	__u64 *count = bpf_map_lookup_elem(&by_thread, &tid);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return;
	}
	__u64 first = 1;
	// BPF_NOEXIST: if the thread raced us in on another CPU (it cannot,
	// a thread enters one syscall at a time, but stay exact anyway) the
	// update fails with EEXIST and the retry below adds to its count.
	long error = bpf_map_update_elem(&by_thread, &tid, &first, BPF_NOEXIST);
	if (error == 0)
		return;
	count = bpf_map_lookup_elem(&by_thread, &tid);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		count_untracked(UNTRACKED_THREAD); // Table full (E2BIG).
}

SEC("raw_tracepoint/sys_enter")
int count_syscall(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 config_index = CONFIG_TARGET_TGID;
	__u32 *target_tgid = bpf_map_lookup_elem(&config, &config_index);
	if (!target_tgid || *target_tgid == 0)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(pid_tgid >> 32) != *target_tgid)
		return 0;

	count_thread((__u32)pid_tgid);

	long number = (long)ctx->args[1];
	// Also bounds the index for the verifier; -1 is what a ptrace'd or
	// seccomp-skipped syscall can carry.
	if (number < 0 || number >= SYSCALL_NUMBERS_MAX) {
		count_untracked(UNTRACKED_NUMBER);
		return 0;
	}
	__u32 number_index = (__u32)number;
	__u64 *count = bpf_map_lookup_elem(&by_number, &number_index);
	if (count)
		*count += 1; // Per-CPU slot: no atomic needed.
	return 0;
}

// No helper used here is GPL-only; a GPL-compatible license keeps those
// available to later counters, as in the other objects.
char LICENSE[] SEC("license") = "Dual MIT/GPL";
