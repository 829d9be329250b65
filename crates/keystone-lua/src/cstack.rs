//! The C stack under user code. LuaJIT bounds Lua recursion (its own
//! stack: "stack overflow", a Lua error) but not C recursion: a C library
//! function that calls back into Lua (`string.gsub` with a function or a
//! table, `string.format`'s `%s` through `__tostring`, `table.sort`'s
//! comparator, `coroutine.resume`/`wrap`) nests on the thread's C stack,
//! and recursion through one (`f` calling `gsub(s, ".", f)`) runs off its
//! end: the thread hits its guard page and the whole process dies. The
//! sandbox (sandbox.lua) enters each such function through
//! [`c_stack_room`], which refuses — a Lua error, "C stack overflow", a
//! 500 like any other — once the thread's stack holds more than
//! [`C_STACK_USED_MAX_BYTES`] or has less than [`C_STACK_MARGIN_BYTES`]
//! left. The check reads the stack pointer against the thread's stack
//! bounds (`pthread_getattr_np`, once per thread), so it holds on any
//! thread that runs Lua, whatever its stack size.

use std::cell::Cell;

/// Room one more nested C call must find: one level of the deepest of
/// them (`gsub` keeps an 8 KiB `luaL_Buffer` and its match state on the
/// stack, ~10 KiB with the VM's frames) many times over, plus what raising
/// the error and building its traceback take, plus the guard page.
pub const C_STACK_MARGIN_BYTES: usize = 256 * 1024;

/// The most stack user code may hold through nested C calls: ~100 levels
/// of `gsub` callbacks, thousands of cheaper ones (`string.format`
/// through `__tostring`, a few hundred bytes each). A bound on depth as
/// much as on bytes: an error raised at the bottom unwinds every C frame
/// above it, and tens of thousands of them would take the handler's whole
/// time budget to unwind.
pub const C_STACK_USED_MAX_BYTES: usize = 1024 * 1024;

/// The stack every thread that runs user Lua is given: as the main thread
/// of an nginx worker has (8 MiB, the usual `ulimit -s`), so an app that
/// recurses through C functions reaches as deep as under OpenResty before
/// it fails. Address space only: pages are committed as they are touched.
pub const LUA_THREAD_STACK_BYTES: usize = 8 * 1024 * 1024;

thread_local! {
    /// This thread's stack as `(lowest address, highest address)`; zeros
    /// until first asked.
    static STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The calling thread's stack as `(lowest address, highest address)`;
/// `(0, usize::MAX)` when the bounds cannot be read: then no check refuses.
fn stack_bounds() -> (usize, usize) {
    // SAFETY: `attr` is initialised by pthread_getattr_np before it is
    // read and destroyed once; `addr`/`size` are plain out-parameters.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, usize::MAX);
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if got != 0 {
            return (0, usize::MAX);
        }
        (addr as usize, addr as usize + size)
    }
}

/// 1 when the calling thread's C stack has room for one more nested C
/// call that calls back into Lua (less than [`C_STACK_USED_MAX_BYTES`]
/// used, more than [`C_STACK_MARGIN_BYTES`] left), 0 when it has not.
/// Called by the prelude through LuaJIT's FFI before each such call.
pub(crate) extern "C" fn c_stack_room() -> i32 {
    let marker = 0u8;
    let here = std::ptr::addr_of!(marker) as usize;
    let (floor, top) = STACK.with(|stack| {
        if stack.get() == (0, 0) {
            stack.set(stack_bounds());
        }
        stack.get()
    });
    let left = here.saturating_sub(floor);
    let used = top.saturating_sub(here);
    i32::from(left > C_STACK_MARGIN_BYTES && used < C_STACK_USED_MAX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recurses until the room check refuses; returns where it refused.
    #[inline(never)]
    fn address_refused() -> usize {
        let pad = std::hint::black_box([0u8; 4096]);
        if c_stack_room() == 0 {
            return std::ptr::addr_of!(pad) as usize;
        }
        address_refused()
    }

    /// `(bytes left below, bytes used above)` where the check refused, on
    /// a thread of `stack_bytes`.
    fn refused_on(stack_bytes: usize) -> (usize, usize) {
        std::thread::Builder::new()
            .stack_size(stack_bytes)
            .spawn(|| {
                let (floor, top) = stack_bounds();
                let here = address_refused();
                (here - floor, top - here)
            })
            .expect("spawn")
            .join()
            .expect("the check refused before the guard page")
    }

    #[test]
    fn room_runs_out_before_the_stack_does() {
        // A frame is 4 KiB and some: refusal comes within a frame or two
        // of the bound that holds. (glibc may hand a thread a cached stack
        // larger than asked: the bound that holds is read from the stack
        // the thread really got.)
        const SLACK: usize = 32 * 1024;
        for asked in [768 * 1024, LUA_THREAD_STACK_BYTES] {
            let (left, used) = refused_on(asked);
            let stack = left + used;
            if stack < C_STACK_USED_MAX_BYTES + C_STACK_MARGIN_BYTES {
                assert!(
                    (C_STACK_MARGIN_BYTES - SLACK..=C_STACK_MARGIN_BYTES).contains(&left),
                    "a {stack}-byte stack refused with {left} bytes left"
                );
            } else {
                assert!(
                    (C_STACK_USED_MAX_BYTES..C_STACK_USED_MAX_BYTES + SLACK).contains(&used),
                    "a {stack}-byte stack refused with {used} bytes used"
                );
                assert!(left > C_STACK_MARGIN_BYTES);
            }
        }
        assert_eq!(c_stack_room(), 1, "a shallow stack has room");
    }
}
