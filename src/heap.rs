//! Giving the C heap's freed memory back to the operating system, so RSS follows the load.
//!
//! Rust allocations go to mimalloc, which returns freed pages by itself. librdkafka allocates
//! with glibc's malloc, whose arenas (one per allocating thread, up to eight per core) keep what
//! is freed for reuse: after a burst or a backlog that memory stays in RSS for good (in the soak
//! of 2026-12-01, 48–118 MiB held with 3 MiB in use), which reads as a leak against a
//! Kubernetes memory limit. `malloc_trim` hands the free pages of every arena back.

use std::time::Duration;

/// Starts a thread that trims the C heap every `every`; `Duration::ZERO` starts nothing.
///
/// A thread of its own, not a task: a trim walks every arena under its lock, which must not
/// hold up an async runtime's worker.
pub fn spawn_trimmer(every: Duration) -> std::io::Result<()> {
    if every.is_zero() || !SUPPORTED {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            trim();
        })
        .map(|_| ())
}

/// Whether this build can trim (glibc only; musl and others keep no per-thread arenas).
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Returns the C heap's free pages to the operating system; answers whether any were returned.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a plain size and only touches glibc's own heap state,
        // under the arenas' locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// This process's resident set, in bytes.
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .expect("rss field")
            .parse()
            .expect("number");
        // SAFETY: sysconf only reads a constant.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
    }

    #[test]
    fn trimming_returns_freed_c_heap_that_glibc_would_keep() {
        // 128 MiB in blocks far below the mmap threshold, so they live in an arena.
        const BLOCK: usize = 4096;
        const BLOCKS: usize = 32 * 1024;
        // SAFETY: every pointer is checked, written within its size and freed exactly once.
        let held = unsafe {
            let blocks: Vec<*mut u8> = (0..BLOCKS).map(|_| libc::malloc(BLOCK).cast::<u8>()).collect();
            assert!(blocks.iter().all(|p| !p.is_null()), "malloc");
            for p in &blocks {
                std::ptr::write_bytes(*p, 1, BLOCK);
            }
            // Keep the last block so the heap's top can't shrink by itself on free: what is
            // freed below it stays with glibc until a trim.
            let (last, rest) = blocks.split_last().expect("blocks");
            for p in rest {
                libc::free((*p).cast());
            }
            let before = rss();
            let released = trim();
            let after = rss();
            libc::free((*last).cast());
            assert!(released, "glibc reports nothing to release");
            before.saturating_sub(after)
        };
        assert!(held > 64 << 20, "only {held} bytes returned of ~128 MiB freed");
    }
}
