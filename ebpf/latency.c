// SPDX-License-Identifier: MIT OR GPL-2.0
//
// Keystone latency observer: a log2 histogram of how long the server takes
// to answer, seen from the kernel's socket layer, with no instrumentation in
// the server, kept for the whole process and for each thread that answered
// (`thread_latency`, by tid: a worker's own latency). Loaded and attached
// by crates/keystone-ebpf (observer.rs) only when the server runs with
// --observe; rebuild the committed object with `cargo xtask build-ebpf`.
//
// What one sample is: for one TCP socket of the observed process, the time
// from the first read that returned data since the socket's last send (or
// since it opened) to the end of the next send call on it. That is one
// read-to-write turn of a connection: it includes parsing, routing, Lua,
// serializing, any queueing inside the worker (other connections served
// first, completions waiting in the ring) and the send call itself (the
// kernel taking the response into the socket buffer; on loopback that
// includes delivering it to the peer's receive queue); it excludes the
// network from the client, the time the request sat in the socket's
// receive queue before the server read it, the copying of the first read
// (the turn starts when that read returns) and the client reading the
// response. Several pipelined requests read together and answered by one
// send are one sample; a response written in several sends ends its
// sample at the first. A send that fails (EAGAIN on a full socket buffer)
// still ends the turn: the response was ready then.
//
// Attach points: the raw tracepoints sock:sock_recv_length and
// sock:sock_send_length (Linux 6.3+), which fire in the generic socket
// layer when a recvmsg/sendmsg on any socket returns, with the socket and
// the byte count or error; and tcp:tcp_destroy_sock, to forget a socket
// whose address a later connection may reuse. io_uring's IORING_OP_RECV,
// SEND, READ and WRITE go through the same layer (sock_recvmsg,
// sock_sendmsg), inline at submission, from task work in the submitting
// thread, or on an io-wq worker (iou-wrk-*), which is a thread of the
// submitting process since Linux 5.12: the thread group filter matches in
// all three. Raw tracepoints attach by name, with no tracefs.
//
// Why not kprobes or fentry/fexit on tcp_recvmsg/tcp_sendmsg: they are the
// obvious points but need CONFIG_KPROBES, or BPF trampolines, and the
// kernel this was written on has neither (no kprobes configured; tracing
// programs of type fentry are refused with EPERM). Tracepoints are a
// stable ABI and exist wherever BPF tracing does.
//
// Self-contained: linux/bpf.h and bpf/bpf_helpers.h, plus
// bpf/bpf_core_read.h for reading two socket fields, no vmlinux.h. The
// kernel structs read are declared below with only the fields used and
// preserve_access_index, so the loader relocates their offsets against the
// running kernel's BTF (CO-RE); keystone-ebpf refuses to load this object
// on a kernel without BTF rather than read at guessed offsets.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

// Keep in sync with keystone_ebpf::observer::BUCKETS. Bucket i counts turns
// of [2^i, 2^(i+1)) microseconds; bucket 0 also holds those under 1 us and
// the last bucket everything from 2^31 us (~36 minutes) up.
#define BUCKETS 32

// Keep in sync with keystone_ebpf::observer::SOCKETS_MAX: sockets with a
// turn in progress. Above the server's connection limit per host; the map
// is LRU, so past it the oldest turn is forgotten (one sample lost), never
// a new one refused.
#define SOCKETS_MAX 65536

// Keep in sync with keystone_ebpf::observer::THREADS_MAX: threads with a
// histogram of their own in `thread_latency`. A worker per core plus io-wq
// threads stays far below; dead threads keep their entry. Past it a new
// thread's turns are counted only in the process-wide `histogram`.
#define THREADS_MAX 1024

#define NANOSECONDS_PER_MICROSECOND 1000

// Slots of `config`.
#define CONFIG_TARGET_TGID 0 // Thread group to observe; 0 observes nothing.
#define CONFIG_SERVER_PORT 1 // Local TCP port (host order); 0: every port.
#define CONFIG_SLOTS 2

// Only the fields read, with the kernel's names; offsets come from the
// kernel's BTF at load. skc_num is the local port in host byte order.
struct sock_common {
	__u16 skc_family;
	__u16 skc_num;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

#define FAMILY_INET 2 // AF_INET
#define FAMILY_INET6 10 // AF_INET6
#define PROTOCOL_TCP 6 // IPPROTO_TCP

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CONFIG_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

// turn_start[socket address] = bpf_ktime_get_ns() of the turn's first read.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SOCKETS_MAX);
	__type(key, __u64);
	__type(value, __u64);
} turn_start SEC(".maps");

// histogram[i] = turns in bucket i, per CPU; user space sums the CPUs.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} histogram SEC(".maps");

// thread_latency[tid] = the same histogram, for the turns whose send ran on
// thread `tid` (the worker that answered). One entry shared by all CPUs, so
// buckets are added to atomically.
struct thread_histogram {
	__u64 buckets[BUCKETS];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, THREADS_MAX);
	__type(key, __u32);
	__type(value, struct thread_histogram);
} thread_latency SEC(".maps");

static __always_inline __u32 config_get(__u32 slot)
{
	__u32 *value = bpf_map_lookup_elem(&config, &slot);
	return value ? *value : 0;
}

// True when the current task belongs to the observed process.
static __always_inline int observed_process(void)
{
	__u32 target_tgid = config_get(CONFIG_TARGET_TGID);
	if (target_tgid == 0)
		return 0;
	return (__u32)(bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

// floor(log2(value)) for value >= 1, loop-free for the verifier; 0 for 0.
static __always_inline __u32 log2_floor(__u64 value)
{
	__u32 result = 0;
	if (value >> 32) { value >>= 32; result += 32; }
	if (value >> 16) { value >>= 16; result += 16; }
	if (value >> 8) { value >>= 8; result += 8; }
	if (value >> 4) { value >>= 4; result += 4; }
	if (value >> 2) { value >>= 2; result += 2; }
	if (value >> 1) { result += 1; }
	return result;
}

// True for a TCP socket on the configured server port (any port if 0).
static __always_inline int server_socket(struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != FAMILY_INET && family != FAMILY_INET6)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != PROTOCOL_TCP)
		return 0;
	__u32 server_port = config_get(CONFIG_SERVER_PORT);
	return server_port == 0 || BPF_CORE_READ(sk, __sk_common.skc_num) == server_port;
}

// Adds one turn to the current thread's histogram, creating it (zeroed) on
// the thread's first turn. The send runs in the thread that answered (or,
// for io_uring, its task work or one of its io-wq threads), so the
// current tid names it. A full map leaves the turn in `histogram` only.
static __always_inline void count_for_thread(__u32 bucket)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct thread_histogram *thread = bpf_map_lookup_elem(&thread_latency, &tid);
	if (!thread) {
		struct thread_histogram zero = {};
		// BPF_NOEXIST: another CPU may have created it meanwhile (io_uring
		// task work); its count must not be overwritten.
		bpf_map_update_elem(&thread_latency, &tid, &zero, BPF_NOEXIST);
		thread = bpf_map_lookup_elem(&thread_latency, &tid);
		if (!thread)
			return;
	}
	if (bucket >= BUCKETS) // Already clamped; bounds the index for the verifier.
		return;
	__sync_fetch_and_add(&thread->buckets[bucket], 1);
}

// sock_recv_length(struct sock *sk, int ret, int flags): a recvmsg returned.
SEC("raw_tracepoint/sock_recv_length")
int turn_read(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int ret = (int)ctx->args[1];
	if (ret <= 0) // -EAGAIN (io_uring's first, non-blocking try), EOF, error.
		return 0;
	if (!observed_process() || !server_socket(sk))
		return 0;
	__u64 socket_key = (__u64)sk;
	__u64 now_ns = bpf_ktime_get_ns();
	// BPF_NOEXIST keeps the first read of the turn: a request arriving in
	// several reads is timed from its first read.
	bpf_map_update_elem(&turn_start, &socket_key, &now_ns, BPF_NOEXIST);
	return 0;
}

// sock_send_length(struct sock *sk, int ret, int flags): a sendmsg returned.
SEC("raw_tracepoint/sock_send_length")
int turn_write(struct bpf_raw_tracepoint_args *ctx)
{
	if (!observed_process())
		return 0;
	// Only server sockets ever get a start: the lookup is the filter.
	__u64 socket_key = ctx->args[0];
	__u64 *start_ns = bpf_map_lookup_elem(&turn_start, &socket_key);
	if (!start_ns)
		return 0; // No read since the last send, or not a server socket.
	__u64 elapsed_us = (bpf_ktime_get_ns() - *start_ns) / NANOSECONDS_PER_MICROSECOND;
	bpf_map_delete_elem(&turn_start, &socket_key);
	__u32 bucket = log2_floor(elapsed_us);
	if (bucket >= BUCKETS)
		bucket = BUCKETS - 1;
	__u64 *count = bpf_map_lookup_elem(&histogram, &bucket);
	if (count)
		*count += 1; // Per-CPU slot: no atomic needed.
	count_for_thread(bucket);
	return 0;
}

// tcp_destroy_sock(struct sock *sk): the socket is done (it may run in
// softirq, in any process, so no thread group filter). Its address is
// reused by later connections: forget a turn that never got its send (a
// lingering close's drained reads, a client that left mid-request), or the
// next connection would inherit its start.
SEC("raw_tracepoint/tcp_destroy_sock")
int socket_destroy(struct bpf_raw_tracepoint_args *ctx)
{
	if (config_get(CONFIG_TARGET_TGID) == 0)
		return 0;
	__u64 socket_key = ctx->args[0];
	bpf_map_delete_elem(&turn_start, &socket_key);
	return 0;
}

// bpf_probe_read_kernel (BPF_CORE_READ) is GPL-only.
char LICENSE[] SEC("license") = "Dual MIT/GPL";
