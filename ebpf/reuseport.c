// SPDX-License-Identifier: MIT OR GPL-2.0
//
// Keystone SO_REUSEPORT steering: picks which worker's listening socket
// receives a new connection. Loaded and attached by crates/keystone-ebpf;
// rebuild the committed object with `cargo xtask build-ebpf`.
//
// Policy: consistent by 4-tuple. index = reuse_md->hash % worker_count,
// where `hash` is the kernel's flow hash of the connection's 4-tuple
// (inet_ehashfn for TCP, salted per boot). Every SYN of one 4-tuple maps to
// the same index, so a connection (and a client that reconnects from the
// same source port) always lands on the same worker and Lua state.
//
// Why not "the CPU that received the packet" (bpf_get_smp_processor_id() %
// worker_count)? That gives the best cache locality when RSS/RPS steer a
// flow to the worker's own core, but it depends on NIC queue and IRQ
// affinity set up outside Keystone: with one RX queue or loopback traffic it
// sends every connection to one worker. The hash needs no host tuning and
// spreads evenly; the CPU policy can be added later as an opt-in.
//
// Never drops: if the map slot is empty or the selection fails, the program
// returns SK_PASS without selecting, and the kernel falls back to its own
// reuseport hashing over the group.
//
// Self-contained: only linux/bpf.h (linux-libc-dev) and bpf/bpf_helpers.h
// (libbpf-dev), no vmlinux.h, so the build does not depend on the running
// kernel's BTF.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Keep in sync with keystone_ebpf::WORKERS_MAX (a test loads this object and
// checks the map's max_entries against it). One slot per worker thread; 256
// cores is above any host we target.
#define WORKERS_MAX 256

// Index of the single slot in `config`.
#define CONFIG_WORKER_COUNT 0

// workers[i] is worker i's listening socket (filled by user space).
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, WORKERS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} workers SEC(".maps");

// config[0] is the live worker count; 0 (unset) means "let the kernel pick".
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

// selected[i] counts successful selections of worker i, per CPU so the hot
// path never contends on a shared cache line; user space sums the CPUs.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WORKERS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} selected SEC(".maps");

SEC("sk_reuseport")
int select_worker(struct sk_reuseport_md *reuse_md)
{
	__u32 config_index = CONFIG_WORKER_COUNT;
	__u32 *worker_count = bpf_map_lookup_elem(&config, &config_index);
	if (!worker_count)
		return SK_PASS;
	__u32 count = *worker_count;
	// Also bounds the index for the verifier and guards the modulo.
	if (count == 0 || count > WORKERS_MAX)
		return SK_PASS;

	__u32 worker_index = reuse_md->hash % count;
	if (bpf_sk_select_reuseport(reuse_md, &workers, &worker_index, 0) != 0)
		return SK_PASS; // Empty slot or socket gone: kernel hashing decides.

	__u64 *selections = bpf_map_lookup_elem(&selected, &worker_index);
	if (selections)
		*selections += 1; // Per-CPU slot: no atomic needed.
	return SK_PASS;
}

// bpf_sk_select_reuseport is not GPL-only, but a GPL-compatible license
// keeps every helper available to future observers in this object.
char LICENSE[] SEC("license") = "Dual MIT/GPL";
