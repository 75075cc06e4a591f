//! The `wmtp` binary: the command line (`cli`) over the `wmtp_host` library.

mod cli;

use clap::Parser;

fn main() {
    // `wmtp … | head` ends quietly instead of panicking on a closed pipe
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(cli::log_filter(args.verbose))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
