//! The one reader of the small files every twinflash program loads by path: keys, certificates, CA bundles, password
//! files, a docker `config.json`. Such a path is configuration, so a mistake (or a hostile setting) can point it at
//! `/dev/zero` (which never ends), a FIFO (which blocks until someone writes) or a huge file: each is refused with a
//! clear error before, or instead of, an unbounded read.
//!
//! The only I/O of this crate; it lives here because every crate that reads such files depends on this one.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// Largest key, certificate, password or credentials file read: 1 MiB (a CA bundle of the whole web PKI is about
/// 200 KiB).
pub const MAX_SMALL_FILE: u64 = 1024 * 1024;

/// Reads `path` whole if it is a regular file (symbolic links followed) of at most [`MAX_SMALL_FILE`] bytes.
///
/// A FIFO, socket, device or directory is refused before it is opened, a larger file before it is read, and a file
/// that grows past the limit while it is read is refused too (`InvalidInput` or `InvalidData`, the message names
/// what the path is).
pub fn read_small_file(path: &Path) -> io::Result<Vec<u8>> {
    read_bounded(path, MAX_SMALL_FILE)
}

/// [`read_small_file`] as UTF-8 text.
pub fn read_small_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_small_file(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// [`read_small_file`] with another limit.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    check(&std::fs::metadata(path)?, max)?;
    let file = File::open(path)?;
    // Checked again on what was opened: the path may have changed in between.
    check(&file.metadata()?, max)?;
    let mut out = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(out)
}

fn check(meta: &Metadata, max: u64) -> io::Result<()> {
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", file_kind(&meta.file_type())),
        ));
    }
    if meta.len() > max {
        return Err(too_large(max));
    }
    Ok(())
}

fn too_large(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than {max} bytes (the limit for keys, certificates and password files)"),
    )
}

/// What a file that is not a regular one is, for a refusal: "a directory", "a FIFO", "a character device" ...
pub fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_everything_else_is_refused() {
        let dir = std::env::temp_dir().join(format!("tf-small-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("key.pem");
        std::fs::write(&ok, b"-----BEGIN-----\n").unwrap();
        assert_eq!(read_small_file(&ok).unwrap(), b"-----BEGIN-----\n");
        assert_eq!(read_small_text(&ok).unwrap(), "-----BEGIN-----\n");

        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; 11]).unwrap();
        let err = read_bounded(&big, 10).unwrap_err();
        assert!(err.to_string().contains("larger than 10 bytes"), "{err}");
        assert_eq!(read_bounded(&big, 11).unwrap().len(), 11);

        // /dev/zero never ends: refused before a byte is read, as is a directory.
        let err = read_small_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let err = read_small_file(&dir).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        // A FIFO would block until someone writes: refused before it is opened.
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = read_small_file(&fifo).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(read_small_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
