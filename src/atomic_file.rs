//! Files replaced whole or not at all: written to a temporary file beside them, fsynced, renamed
//! over the old one, and the folder fsynced. A crash at any point leaves the old file or the new
//! one, never a mix. Imports nothing of the relay.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` as `dir/name` through `dir/<name>.tmp`.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_file_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "x.json", b"one").expect("write");
        write(dir.path(), "x.json", b"two").expect("write");
        assert_eq!(fs::read(dir.path().join("x.json")).expect("read"), b"two");
        assert!(!dir.path().join("x.json.tmp").exists());
    }
}
