//! Standard output that ends the program quietly when its reader has gone
//! (`twinflash rollout status --json | head`): Rust ignores SIGPIPE, so `println!` would panic on
//! the closed pipe. The exit status is then 0, as ripgrep and other Rust tools do; any other write
//! error is reported on stderr and ends the program with status 1.

use std::io::Write;

/// Writes `args` to stdout (see the module docs for errors).
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("twinflash: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that survives a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that survives a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*))
    };
}
