fn main() -> std::process::ExitCode {
    // Under a file-size limit (RLIMIT_FSIZE: `ulimit -f`, a systemd LimitFSIZE=), a write past it
    // raises SIGXFSZ, whose default action kills the process without a word. Ignored, the write fails
    // with EFBIG instead: the audit writer then fails closed (statements refused, the reason logged)
    // like on a full disk, rather than the proxy vanishing.
    // SAFETY: called first thing in main, before any other thread exists; SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    warden::cli::main()
}
