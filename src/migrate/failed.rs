//! Setting aside the body of a write-through job that keeps failing, for an operator.

use std::path::Path;

/// Moves a failed job's body to `to`, returning the offset the object starts at there. A
/// body that is the cache's file (`offset` > 0) is set aside as the object alone, as an
/// operator would upload it by hand; if that copy cannot be made, the whole file is moved
/// and its offset kept. The body is never removed before it is somewhere else.
pub(super) fn set_aside_body(
    from: &Path,
    offset: u64,
    len: u64,
    to: &Path,
) -> std::io::Result<u64> {
    if offset > 0 {
        match copy_span(from, offset, len, to) {
            Ok(()) => {
                let _ = std::fs::remove_file(from);
                return Ok(0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot copy the object out of the cache's file; the whole file is set aside");
            }
        }
    }
    std::fs::rename(from, to)?;
    Ok(offset)
}

/// Writes the `len` bytes of `from` after `offset` to `to`.
fn copy_span(from: &Path, offset: u64, len: u64, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut input = std::fs::File::open(from)?;
    input.seek(SeekFrom::Start(offset))?;
    let mut output = std::fs::File::create(to)?;
    let copied = std::io::copy(&mut input.take(len), &mut output)?;
    if copied != len {
        return Err(std::io::Error::other(format!(
            "{copied} of {len} bytes copied"
        )));
    }
    output.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_in_the_caches_file_is_set_aside_as_the_object_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (from, to) = (dir.path().join("7.body"), dir.path().join("failed.body"));
        std::fs::write(&from, b"HEADERobject").expect("body");
        assert_eq!(set_aside_body(&from, 6, 6, &to).expect("set aside"), 0);
        assert_eq!(std::fs::read(&to).expect("set aside"), b"object");
        assert!(!from.exists());
    }

    #[test]
    fn a_body_that_cannot_be_set_aside_stays_where_it_is() {
        let dir = tempfile::tempdir().expect("temp dir");
        let from = dir.path().join("7.body");
        std::fs::write(&from, b"HEADERobject").expect("body");
        // Neither a copy nor a rename can replace a directory that holds a file.
        let to = dir.path().join("failed.body");
        std::fs::create_dir(&to).expect("dir");
        std::fs::write(to.join("x"), b"x").expect("file");
        assert!(set_aside_body(&from, 6, 6, &to).is_err());
        assert_eq!(std::fs::read(&from).expect("kept"), b"HEADERobject");
    }

    #[test]
    fn a_short_file_is_set_aside_whole_with_its_offset() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (from, to) = (dir.path().join("7.body"), dir.path().join("failed.body"));
        std::fs::write(&from, b"HEADERobj").expect("body");
        assert_eq!(set_aside_body(&from, 6, 6, &to).expect("set aside"), 6);
        assert_eq!(std::fs::read(&to).expect("set aside"), b"HEADERobj");
        assert!(!from.exists());
    }
}
