//! The `wardgate` binary: parse the command line and hand over to [`wardgate::cli`].

fn main() -> std::process::ExitCode {
    keep_large_buffers_out_of_the_heap();
    wardgate::reload::set_memory_release(release_freed_memory);
    wardgate::cli::main()
}

/// Allocations of 128 KiB and more (a bundle's text, a `/metrics` page of a large bundle, the
/// parser's buffers) get pages of their own, returned to the kernel when freed. glibc's default
/// raises that threshold after the first such buffer is freed, so later ones came from the heap
/// and their pages stayed resident: three scrapes of a 10,000-rule bundle kept ~2.5 MiB more.
fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of glibc's allocator; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
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
