//! The filesystem's own crash semantics, through the kernel: what a sync makes durable and what a
//! power cut drops. Needs `/dev/fuse` and root (or fusermount3), as the crash tests that use it.

use mesh_powerloss_fs::{Image, Mount, SECTOR_BYTES};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Mounts `image` on a new temporary directory (each test first checks that it can).
fn mount(image: &Image) -> (tempfile::TempDir, Mount) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount =
        Mount::new(dir.path(), image).expect("mount the power-loss filesystem (needs /dev/fuse and root)");
    (dir, mount)
}

fn sync_dir(path: &Path) {
    File::open(path).and_then(|d| d.sync_all()).expect("sync the directory");
}

#[test]
fn a_synced_write_survives_and_an_unsynced_one_does_not() {
    if mesh_powerloss_fs::skip_without_fuse("a_synced_write_survives_and_an_unsynced_one_does_not") {
        return;
    }
    let (dir, fs) = mount(&Image::default());
    let path = dir.path().join("log");
    let mut file = File::create(&path).unwrap();
    sync_dir(dir.path());
    file.write_all(b"durable").unwrap();
    file.sync_data().unwrap();
    file.write_all(b" lost").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"durable lost", "reads see unsynced writes");
    assert_eq!(fs.unsynced_writes(), 1);

    let image = fs.cut(0);
    assert_eq!(image.file("log"), Some(&b"durable"[..]));
    // The power is off: the open file and the mount fail.
    assert_eq!(file.write_all(b"more").unwrap_err().raw_os_error(), Some(libc::EIO));
    drop(file);
    drop(fs);

    // A disk that had written the first unsynced write before the power went.
    let (dir, fs) = mount(&image);
    assert_eq!(fs::read(dir.path().join("log")).unwrap(), b"durable", "the image mounts again");
    let mut file = OpenOptions::new().append(true).open(dir.path().join("log")).unwrap();
    file.write_all(b" one").unwrap();
    file.write_all(b" two").unwrap();
    drop(file);
    assert_eq!(fs.cut(1).file("log"), Some(&b"durable one"[..]));
}

#[test]
fn a_new_file_survives_only_once_its_directory_is_synced() {
    if mesh_powerloss_fs::skip_without_fuse("a_new_file_survives_only_once_its_directory_is_synced") {
        return;
    }
    let (dir, fs) = mount(&Image::default());
    fs::create_dir(dir.path().join("data")).unwrap();
    sync_dir(dir.path());
    let data = dir.path().join("data");
    let mut unlinked = File::create(data.join("a")).unwrap();
    unlinked.write_all(b"a").unwrap();
    unlinked.sync_all().unwrap();
    let image = fs.cut(0);
    assert_eq!(image.list("data"), Some(vec![]), "the file's bytes were synced, its name was not");
    drop((unlinked, fs));

    let (dir, fs) = mount(&image);
    let data = dir.path().join("data");
    let mut linked = File::create(data.join("b")).unwrap();
    linked.write_all(b"b").unwrap();
    linked.sync_all().unwrap();
    sync_dir(&data);
    let image = fs.cut(0);
    assert_eq!(image.file("data/b"), Some(&b"b"[..]));
}

#[test]
fn a_rename_and_an_unlink_are_undone_unless_the_directory_is_synced() {
    if mesh_powerloss_fs::skip_without_fuse(
        "a_rename_and_an_unlink_are_undone_unless_the_directory_is_synced",
    ) {
        return;
    }
    let mut image = Image::default();
    image.root.insert("old".into(), mesh_powerloss_fs::Entry::File(b"old".to_vec()));
    image.root.insert("gone".into(), mesh_powerloss_fs::Entry::File(b"gone".to_vec()));

    let (dir, fs) = mount(&image);
    fs::rename(dir.path().join("old"), dir.path().join("new")).unwrap();
    fs::remove_file(dir.path().join("gone")).unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    assert_eq!(fs.unsynced_writes(), 2, "a rename and an unlink");
    assert_eq!(fs.cut(0), image, "nothing about the names was synced");
    drop(fs);

    let (dir, fs) = mount(&image);
    fs::rename(dir.path().join("old"), dir.path().join("new")).unwrap();
    fs::remove_file(dir.path().join("gone")).unwrap();
    sync_dir(dir.path());
    let after = fs.cut(0);
    assert_eq!(after.list(""), Some(vec!["new".into()]));
    assert_eq!(after.file("new"), Some(&b"old"[..]));
}

#[test]
fn a_reordering_disk_keeps_some_sectors_of_an_unsynced_write_and_tears_it() {
    if mesh_powerloss_fs::skip_without_fuse(
        "a_reordering_disk_keeps_some_sectors_of_an_unsynced_write_and_tears_it",
    ) {
        return;
    }
    let mut image = Image::default();
    image.root.insert("f".into(), mesh_powerloss_fs::Entry::File(vec![0; 3 * SECTOR_BYTES as usize]));
    let (dir, fs) = mount(&image);
    let file = OpenOptions::new().write(true).open(dir.path().join("f")).unwrap();
    // One write over three sectors, starting mid-sector: four pieces.
    let start = SECTOR_BYTES / 2;
    file.write_all_at(&vec![1; 2 * SECTOR_BYTES as usize], start).unwrap();
    let mut pieces = [true, false, true, false].into_iter();
    let cut = fs.cut_sectors(|| pieces.next().unwrap_or(false));
    let bytes = cut.file("f").unwrap();
    let half = start as usize;
    let sector = SECTOR_BYTES as usize;
    assert!(bytes[..half].iter().all(|&b| b == 0), "before the write");
    assert!(bytes[half..sector].iter().all(|&b| b == 1), "first piece kept");
    assert!(bytes[sector..2 * sector].iter().all(|&b| b == 0), "second piece lost");
    assert!(bytes[2 * sector..2 * sector + half].iter().all(|&b| b == 1), "third piece kept");
    assert!(bytes[2 * sector + half..].iter().all(|&b| b == 0), "fourth piece lost");
}

#[test]
fn a_truncation_is_a_change_like_a_write() {
    if mesh_powerloss_fs::skip_without_fuse("a_truncation_is_a_change_like_a_write") {
        return;
    }
    let mut image = Image::default();
    image.root.insert("f".into(), mesh_powerloss_fs::Entry::File(b"0123456789".to_vec()));
    let (dir, fs) = mount(&image);
    let file = OpenOptions::new().write(true).open(dir.path().join("f")).unwrap();
    file.set_len(4).unwrap();
    let mut read = String::new();
    File::open(dir.path().join("f")).unwrap().read_to_string(&mut read).unwrap();
    assert_eq!(read, "0123");
    // O_TRUNC reaches the filesystem as a resize too (fuser does not negotiate an atomic one).
    fs::write(dir.path().join("f"), b"ab").unwrap();
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"ab");
    assert_eq!(fs.cut(0).file("f"), Some(&b"0123456789"[..]));
    let missing = File::open(dir.path().join("f")).unwrap_err();
    assert!(missing.raw_os_error() == Some(libc::EIO) || missing.kind() == ErrorKind::Other, "{missing}");
}

#[test]
fn a_prefix_cut_keeps_directory_changes_in_order_with_the_data() {
    if mesh_powerloss_fs::skip_without_fuse("a_prefix_cut_keeps_directory_changes_in_order_with_the_data") {
        return;
    }
    // Issued in this order, nothing synced: create `tmp` (1), write it (2), rename it over
    // `version` (3). A disk that writes in order keeps a prefix of the three.
    let mut image = Image::default();
    image.root.insert("version".into(), mesh_powerloss_fs::Entry::File(b"v1".to_vec()));
    let expected = [
        (0, vec![("version", &b"v1"[..])]),
        (1, vec![("tmp", &b""[..]), ("version", &b"v1"[..])]),
        (2, vec![("tmp", &b"v2"[..]), ("version", &b"v1"[..])]),
        (3, vec![("version", &b"v2"[..])]),
    ];
    for (keep, files) in expected {
        let (dir, fs) = mount(&image);
        let mut tmp = File::create(dir.path().join("tmp")).unwrap();
        tmp.write_all(b"v2").unwrap();
        drop(tmp);
        fs::rename(dir.path().join("tmp"), dir.path().join("version")).unwrap();
        assert_eq!(fs.unsynced_writes(), 3);
        let cut = fs.cut(keep);
        let names: Vec<_> = files.iter().map(|(name, _)| std::ffi::OsString::from(name)).collect();
        assert_eq!(cut.list(""), Some(names), "keeping {keep}");
        for (name, bytes) in files {
            assert_eq!(cut.file(name), Some(bytes), "keeping {keep}: {name}");
        }
    }
}
