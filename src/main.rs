//! The `wardgate` binary: parse the command line and hand over to [`wardgate::cli`].

fn main() -> std::process::ExitCode {
    wardgate::reload::set_memory_release(release_freed_memory);
    wardgate::cli::main()
}

/// Give glibc's free heap pages back to the kernel (the library is free of unsafe code, so the
/// binary supplies this; see `wardgate::reload::release_freed_memory`).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heaps to the kernel; it takes the
    // allocator's own locks and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
