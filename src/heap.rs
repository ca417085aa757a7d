//! Keeping freed memory for reuse on the CPU backend: a process-wide allocator setting that
//! binaries opt into (the training examples call [`retain_freed_memory`] on ndarray); the
//! library itself never calls it.
//!
//! The ndarray backend allocates a fresh buffer for nearly every tensor operation. glibc's
//! allocator serves large requests (above an adaptive threshold of 128 KiB to 32 MiB) with
//! their own `mmap` and unmaps them when freed, so each operation on a large tensor pays for
//! page faults and zeroed pages in the kernel. Measured on the shapes UNet's benchmark
//! measurement (32 held-out scenes, 2-core machine): 151 s, of which a fifth in page faults,
//! and 95 s with [`retain_freed_memory`].

/// Tells glibc's allocator to serve every allocation from its heap and never give freed
/// memory back to the system, so freed tensor buffers are reused. The process keeps its peak
/// memory until it exits. Returns whether the setting took (always `false` off glibc).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's `mallopt` parameters (malloc.h).
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only changes allocator tuning; both values are documented as
        // valid (0 mmapped chunks; the largest trim threshold).
        unsafe { mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
