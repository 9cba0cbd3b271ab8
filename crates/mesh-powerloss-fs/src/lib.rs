//! A FUSE filesystem in memory that can lose power: the crash proofs for storage engines that
//! open their own files.
//!
//! `kill -9` leaves the OS page cache intact, so a store that forgot an fsync still looks
//! durable after it. mesh-store's `PowerLossDisk` catches that for redb, which takes a
//! `StorageBackend`; an engine that opens its files itself (an LSM such as fjall, whose journal,
//! tables and manifest are files it creates, renames and deletes) can only be interposed on
//! below the file API. [`PowerLossFs`] is that layer: mounted with FUSE, it keeps every file and
//! directory in memory and remembers, apart from what reads see, what the last sync made
//! durable:
//!
//! - a file's bytes become durable with `fsync`/`fdatasync` of that file;
//! - a directory's entries (create, unlink, rename, mkdir, rmdir) become durable with `fsync`
//!   of that directory, the rule POSIX gives and the crash-consistency studies test for
//!   (Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014). A file synced but
//!   never linked durably can be lost; a rename not followed by a directory sync can be undone.
//!
//! [`Mount::cut`] cuts the power: from then on every call that reaches the filesystem fails
//! with `EIO` (reads the kernel serves from its page cache still succeed; writes and syncs do
//! not), and it returns the [`Image`] a power loss would leave: the durable tree and bytes plus,
//! at most, a prefix of the changes issued since their last syncs (writes, resizes, creates,
//! unlinks, renames), in the order they were issued across all files and directories, as a disk
//! and a journal that write in order would keep them: so "the rename survived, the renamed
//! file's unsynced data did not" is one of the outcomes. [`Mount::cut_sectors`] models a disk that
//! reorders and tears writes at 4 KiB sectors, as `PowerLossDisk::cut_sectors` does, with
//! directory changes kept as an in-order prefix. Mounting the image again ([`Mount::new`]) is the
//! reboot.
//!
//! Data goes through the kernel without a write-back cache (FUSE's default), so every `write`
//! reaches this process before the call returns, and reads see it. Attributes and entries are
//! not cached (zero TTL), so the kernel asks again after a rename or unlink. Not modelled:
//! shared writable `mmap` (neither redb nor fjall writes through one), hard links, symlinks,
//! extended attributes, and file metadata other than size (modes and times are not kept).
//!
//! Mounting needs `/dev/fuse` and either root (`mount(2)`) or Debian's `fuse3`
//! (`fusermount3`). Tests that use it run on Linux only.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest file the filesystem holds (4 GiB); writes and resizes past it fail with `EFBIG`.
pub const FILE_BYTES_MAX: u64 = 4 << 30;

/// The unit a reordering disk writes or loses as a whole ([`Mount::cut_sectors`]).
pub const SECTOR_BYTES: u64 = 4096;

/// What survives a power loss: a directory tree, each file's bytes. Also what a mount starts from
/// ([`Mount::new`]); [`Image::default`] is an empty root directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// The root directory's entries.
    pub root: BTreeMap<OsString, Entry>,
}

/// One directory entry of an [`Image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A directory and its entries.
    Dir(BTreeMap<OsString, Entry>),
}

impl Image {
    /// The bytes of the file at `path` (relative to the root), if the image holds one there.
    pub fn file(&self, path: impl AsRef<Path>) -> Option<&[u8]> {
        match self.entry(path.as_ref())? {
            Entry::File(bytes) => Some(bytes),
            Entry::Dir(_) => None,
        }
    }

    /// The names in the directory at `path` (relative to the root; `""` is the root), if the
    /// image holds a directory there.
    pub fn list(&self, path: impl AsRef<Path>) -> Option<Vec<OsString>> {
        let path = path.as_ref();
        let dir = if path.as_os_str().is_empty() {
            &self.root
        } else {
            match self.entry(path)? {
                Entry::Dir(entries) => entries,
                Entry::File(_) => return None,
            }
        };
        Some(dir.keys().cloned().collect())
    }

    fn entry(&self, path: &Path) -> Option<&Entry> {
        let mut dir = &self.root;
        let mut found: Option<&Entry> = None;
        for component in path.components() {
            let Component::Normal(name) = component else { return None };
            if let Some(entry) = found {
                match entry {
                    Entry::Dir(entries) => dir = entries,
                    Entry::File(_) => return None,
                }
            }
            found = Some(dir.get(name)?);
        }
        found
    }
}

/// A write or resize issued since its file's last sync.
#[derive(Debug, Clone)]
enum Pending {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
    /// What survives of a write at a reordering cut: some of its sectors.
    Sectors(Vec<(u64, Vec<u8>)>),
}

impl Pending {
    fn apply(&self, image: &mut Vec<u8>) {
        match self {
            Pending::Write { offset, data } => {
                let start = usize::try_from(*offset).expect("offset fits in memory");
                let end = start + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[start..end].copy_from_slice(data);
            }
            Pending::SetLen(len) => image.resize(usize::try_from(*len).expect("length fits in memory"), 0),
            Pending::Sectors(sectors) => {
                for (offset, data) in sectors {
                    Pending::Write { offset: *offset, data: data.clone() }.apply(image);
                }
            }
        }
    }
}

/// A change of a directory's entries since the directory's last sync.
#[derive(Debug, Clone)]
enum Naming {
    Link(OsString, u64),
    Unlink(OsString),
}

impl Naming {
    fn apply(&self, entries: &mut BTreeMap<OsString, u64>) {
        match self {
            Naming::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            Naming::Unlink(name) => {
                entries.remove(name);
            }
        }
    }
}

/// How a cut treats what was issued since the last syncs.
enum Cut<'a> {
    /// The first this many issued changes survive whole, in issue order, the rest not.
    Prefix(usize),
    /// Each sector of each write, and each resize, survives as `keep` says; directory changes
    /// survive as a journal would commit them: in issue order, up to the first one `keep`
    /// drops.
    Sectors(&'a mut dyn FnMut() -> bool),
}

#[derive(Debug)]
struct File {
    /// What reads see.
    current: Vec<u8>,
    /// What the last sync of this file made durable.
    durable: Vec<u8>,
    /// Writes and resizes since the last sync, each with its issue number across all files.
    pending: Vec<(u64, Pending)>,
}

#[derive(Debug)]
struct Dir {
    parent: u64,
    current: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Node {
    File(File),
    Dir(Dir),
}

/// The filesystem's state, shared by the FUSE session and the [`Mount`] that cuts its power.
#[derive(Debug)]
struct State {
    /// Every inode ever created: an unlinked inode may still be named by a durable directory
    /// entry, so none is dropped before the mount ends.
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Issue number of the next write, resize or directory change.
    next_issue: u64,
    /// Directory changes not yet covered by their directory's sync, in issue order, each with
    /// its issue number and directory. A rename is two changes with one issue number: a disk
    /// keeps both or neither.
    naming: Vec<(u64, u64, Naming)>,
    /// Power is off: every call fails with `EIO`.
    dead: bool,
    /// Completed file and directory syncs.
    syncs: u64,
}

const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

impl State {
    fn from_image(image: &Image) -> Self {
        let mut state = State {
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            next_issue: 0,
            naming: Vec::new(),
            dead: false,
            syncs: 0,
        };
        state.nodes.insert(
            ROOT,
            Node::Dir(Dir { parent: ROOT, current: BTreeMap::new(), durable: BTreeMap::new() }),
        );
        state.load(ROOT, &image.root);
        state
    }

    fn load(&mut self, dir: u64, entries: &BTreeMap<OsString, Entry>) {
        for (name, entry) in entries {
            let ino = self.next_ino;
            self.next_ino += 1;
            match entry {
                Entry::File(bytes) => {
                    let file = File { current: bytes.clone(), durable: bytes.clone(), pending: Vec::new() };
                    self.nodes.insert(ino, Node::File(file));
                }
                Entry::Dir(children) => {
                    let node = Dir { parent: dir, current: BTreeMap::new(), durable: BTreeMap::new() };
                    self.nodes.insert(ino, Node::Dir(node));
                    self.load(ino, children);
                }
            }
            let Some(Node::Dir(parent)) = self.nodes.get_mut(&dir) else {
                unreachable!("loaded into a directory")
            };
            parent.current.insert(name.clone(), ino);
            parent.durable.insert(name.clone(), ino);
        }
    }

    fn check(&self) -> Result<(), Errno> {
        if self.dead {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn dir(&self, ino: u64) -> Result<&Dir, Errno> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(dir)) => Ok(dir),
            Some(Node::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(dir)) => Ok(dir),
            Some(Node::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut File, Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(file)) => Ok(file),
            Some(Node::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn attr(&self, ino: u64, req: &Request) -> Result<FileAttr, Errno> {
        let (kind, size, perm, nlink) = match self.nodes.get(&ino).ok_or(Errno::ENOENT)? {
            Node::File(file) => (FileType::RegularFile, file.current.len() as u64, 0o644, 1),
            Node::Dir(_) => (FileType::Directory, 0, 0o755, 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            flags: 0,
            blksize: SECTOR_BYTES as u32,
        })
    }

    /// Records a change of `ino`'s bytes: applied now, durable at the file's next sync. A file
    /// may not grow past [`FILE_BYTES_MAX`] (`EFBIG`): the filesystem is memory, and a panic
    /// on its one thread would leave every caller waiting.
    fn change(&mut self, ino: u64, pending: Pending) -> Result<(), Errno> {
        let end = match &pending {
            Pending::Write { offset, data } => offset.saturating_add(data.len() as u64),
            Pending::SetLen(len) => *len,
            Pending::Sectors(_) => 0,
        };
        if end > FILE_BYTES_MAX {
            return Err(Errno::EFBIG);
        }
        // An issue number a failed call takes is never used: ranks count issues in use.
        let issue = self.issue();
        let file = self.file_mut(ino)?;
        pending.apply(&mut file.current);
        file.pending.push((issue, pending));
        Ok(())
    }

    /// Links a new node as `name` in `parent`.
    fn link_new(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<u64, Errno> {
        if self.dir(parent)?.current.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        let issue = self.issue();
        self.change_entries(issue, parent, Naming::Link(name.to_owned(), ino))?;
        Ok(ino)
    }

    /// The inode `name` names in directory `parent` now.
    fn entry(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?.current.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// A new issue number.
    fn issue(&mut self) -> u64 {
        self.next_issue += 1;
        self.next_issue - 1
    }

    /// Applies `naming` to `dir`'s entries now; durable at the directory's next sync.
    fn change_entries(&mut self, issue: u64, dir: u64, naming: Naming) -> Result<(), Errno> {
        naming.apply(&mut self.dir_mut(dir)?.current);
        self.naming.push((issue, dir, naming));
        Ok(())
    }

    /// Changes issued since their file's or directory's last sync.
    fn unsynced(&self) -> usize {
        let mut issues: Vec<u64> = self.naming.iter().map(|(issue, _, _)| *issue).collect();
        for node in self.nodes.values() {
            if let Node::File(file) = node {
                issues.extend(file.pending.iter().map(|(issue, _)| *issue));
            }
        }
        issues.sort_unstable();
        issues.dedup();
        issues.len()
    }

    /// The image a power loss leaves under `cut`: the durable tree and bytes, with the
    /// unsynced changes that survive applied in issue order.
    fn image(&self, mut cut: Cut<'_>) -> Image {
        enum Item<'s> {
            Data(u64, &'s Pending),
            Naming(u64, &'s Naming),
        }
        let mut issued: Vec<(u64, Item<'_>)> =
            self.naming.iter().map(|(issue, dir, naming)| (*issue, Item::Naming(*dir, naming))).collect();
        for (&ino, node) in &self.nodes {
            if let Node::File(file) = node {
                issued.extend(file.pending.iter().map(|(issue, p)| (*issue, Item::Data(ino, p))));
            }
        }
        // Stable: a rename's two changes keep their order.
        issued.sort_by_key(|(issue, _)| *issue);
        let mut contents: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut dirs: HashMap<u64, BTreeMap<OsString, u64>> = HashMap::new();
        // `rank`: the position of the current issue among the distinct issues.
        let (mut rank, mut last_issue) = (0usize, None);
        let mut journal_open = true;
        let mut naming_kept: Option<bool> = None;
        for (issue, item) in issued {
            if last_issue != Some(issue) {
                if last_issue.is_some() {
                    rank += 1;
                }
                last_issue = Some(issue);
                naming_kept = None;
            }
            match item {
                Item::Data(ino, pending) => {
                    let kept = match &mut cut {
                        Cut::Prefix(keep) => (rank < *keep).then(|| pending.clone()),
                        Cut::Sectors(keep) => sectors_kept(pending, *keep),
                    };
                    if let Some(kept) = kept {
                        let Some(Node::File(file)) = self.nodes.get(&ino) else {
                            unreachable!("pending belongs to a file")
                        };
                        kept.apply(contents.entry(ino).or_insert_with(|| file.durable.clone()));
                    }
                }
                Item::Naming(dir, naming) => {
                    // One decision per issue: both halves of a rename, or neither.
                    let kept = *naming_kept.get_or_insert_with(|| match &mut cut {
                        Cut::Prefix(keep) => rank < *keep,
                        Cut::Sectors(keep) => {
                            journal_open = journal_open && keep();
                            journal_open
                        }
                    });
                    if kept {
                        let Some(Node::Dir(node)) = self.nodes.get(&dir) else {
                            unreachable!("naming belongs to a directory")
                        };
                        naming.apply(dirs.entry(dir).or_insert_with(|| node.durable.clone()));
                    }
                }
            }
        }
        let mut visited = std::collections::HashSet::new();
        Image { root: self.durable_tree(ROOT, &contents, &dirs, &mut visited) }
    }

    /// The tree under `dir` as it survives: its entries from `dirs` when unsynced changes to
    /// them survived, else its durable ones. `visited` stops at a directory reached twice
    /// (renames of directories, partly synced, can make a cycle).
    fn durable_tree(
        &self,
        dir: u64,
        contents: &HashMap<u64, Vec<u8>>,
        dirs: &HashMap<u64, BTreeMap<OsString, u64>>,
        visited: &mut std::collections::HashSet<u64>,
    ) -> BTreeMap<OsString, Entry> {
        let Some(Node::Dir(node)) = self.nodes.get(&dir) else { unreachable!("a directory") };
        if !visited.insert(dir) {
            return BTreeMap::new();
        }
        dirs.get(&dir)
            .unwrap_or(&node.durable)
            .iter()
            .filter_map(|(name, ino)| {
                let entry = match self.nodes.get(ino)? {
                    Node::File(file) => {
                        Entry::File(contents.get(ino).cloned().unwrap_or_else(|| file.durable.clone()))
                    }
                    Node::Dir(_) => Entry::Dir(self.durable_tree(*ino, contents, dirs, visited)),
                };
                Some((name.clone(), entry))
            })
            .collect()
    }
}

/// What a reordering disk keeps of one unsynced change ([`Cut::Sectors`]): a resize or not,
/// and of a write each [`SECTOR_BYTES`] sector as `keep` says.
fn sectors_kept(pending: &Pending, keep: &mut dyn FnMut() -> bool) -> Option<Pending> {
    match pending {
        Pending::SetLen(_) => keep().then(|| pending.clone()),
        Pending::Write { offset, data } => {
            let mut kept = Vec::new();
            let mut at = 0usize;
            while at < data.len() {
                let absolute = offset + at as u64;
                let sector_end = (absolute / SECTOR_BYTES + 1) * SECTOR_BYTES;
                let end = (at + (sector_end - absolute) as usize).min(data.len());
                if keep() {
                    kept.push((absolute, data[at..end].to_vec()));
                }
                at = end;
            }
            Some(Pending::Sectors(kept))
        }
        Pending::Sectors(_) => unreachable!("only cuts make sector lists"),
    }
}

/// The FUSE filesystem. Mount it with [`Mount::new`].
#[derive(Debug, Clone)]
pub struct PowerLossFs {
    state: Arc<Mutex<State>>,
}

impl PowerLossFs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` as [`PowerLossFs::with`] does and answers a call that returns nothing with
    /// its result.
    fn answer(&self, reply: ReplyEmpty, f: impl FnOnce(&mut State) -> Result<(), Errno>) {
        match self.with(f) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Runs `f` on the state unless the power is off.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut state = self.lock();
        state.check()?;
        f(&mut state)
    }
}

fn to_u64(ino: INodeNo) -> u64 {
    u64::from(ino)
}

impl Filesystem for PowerLossFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.with(|s| {
            let ino = s.entry(to_u64(parent), name)?;
            s.attr(ino, req)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|s| s.attr(to_u64(ino), req)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.with(|s| {
            if let Some(len) = size {
                s.change(to_u64(ino), Pending::SetLen(len))?;
            }
            s.attr(to_u64(ino), req)
        }) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.with(|s| {
            let dir = Dir { parent: to_u64(parent), current: BTreeMap::new(), durable: BTreeMap::new() };
            let ino = s.link_new(to_u64(parent), name, Node::Dir(dir))?;
            s.attr(ino, req)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.answer(reply, |s| {
            let ino = s.entry(to_u64(parent), name)?;
            if matches!(s.nodes.get(&ino), Some(Node::Dir(_))) {
                return Err(Errno::EISDIR);
            }
            let issue = s.issue();
            s.change_entries(issue, to_u64(parent), Naming::Unlink(name.to_owned()))
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.answer(reply, |s| {
            let ino = s.entry(to_u64(parent), name)?;
            if !s.dir(ino)?.current.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            let issue = s.issue();
            s.change_entries(issue, to_u64(parent), Naming::Unlink(name.to_owned()))
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.answer(reply, |s| {
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            let ino = s.entry(to_u64(parent), name)?;
            if let Some(&target) = s.dir(to_u64(newparent))?.current.get(newname) {
                match (s.nodes.get(&ino), s.nodes.get(&target)) {
                    (Some(Node::File(_)), Some(Node::Dir(_))) => return Err(Errno::EISDIR),
                    (Some(Node::Dir(_)), Some(Node::File(_))) => return Err(Errno::ENOTDIR),
                    (Some(Node::Dir(_)), Some(Node::Dir(d))) if !d.current.is_empty() => {
                        return Err(Errno::ENOTEMPTY)
                    }
                    _ => {}
                }
            }
            // One issue for both halves: a disk keeps the whole rename or none of it.
            let issue = s.issue();
            s.change_entries(issue, to_u64(parent), Naming::Unlink(name.to_owned()))?;
            s.change_entries(issue, to_u64(newparent), Naming::Link(newname.to_owned(), ino))?;
            if let Some(Node::Dir(dir)) = s.nodes.get_mut(&ino) {
                dir.parent = to_u64(newparent);
            }
            Ok(())
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| s.nodes.get(&to_u64(ino)).map(drop).ok_or(Errno::ENOENT)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.lock();
        let result = state.check().and_then(|()| match state.nodes.get(&to_u64(ino)) {
            Some(Node::File(file)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(file.current.len());
                let end = start.saturating_add(size as usize).min(file.current.len());
                Ok(&file.current[start..end])
            }
            Some(Node::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        });
        match result {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|s| s.change(to_u64(ino), Pending::Write { offset, data: data.to_vec() })) {
            Ok(()) => reply.written(u32::try_from(data.len()).expect("a FUSE write is far below 4 GiB")),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        self.answer(reply, |_| Ok(()));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.answer(reply, |s| {
            let file = s.file_mut(to_u64(ino))?;
            file.durable.clone_from(&file.current);
            file.pending.clear();
            s.syncs += 1;
            Ok(())
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| s.dir(to_u64(ino)).map(drop)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = self.with(|s| {
            let dir = s.dir(to_u64(ino))?;
            let mut entries = vec![
                (to_u64(ino), FileType::Directory, OsString::from(".")),
                (dir.parent, FileType::Directory, OsString::from("..")),
            ];
            for (name, &child) in &dir.current {
                let kind = match s.nodes.get(&child) {
                    Some(Node::Dir(_)) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                entries.push((child, kind, name.clone()));
            }
            Ok(entries)
        });
        match entries {
            Ok(entries) => {
                for (index, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.answer(reply, |s| {
            let dir = s.dir_mut(to_u64(ino))?;
            dir.durable.clone_from(&dir.current);
            s.naming.retain(|(_, dir, _)| *dir != to_u64(ino));
            s.syncs += 1;
            Ok(())
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Room enough for any test: 1 TiB in 4 KiB blocks, all free.
        let blocks = (1u64 << 40) / SECTOR_BYTES;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, SECTOR_BYTES as u32, 255, SECTOR_BYTES as u32);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.with(|s| {
            let file = File { current: Vec::new(), durable: Vec::new(), pending: Vec::new() };
            let ino = s.link_new(to_u64(parent), name, Node::File(file))?;
            s.attr(ino, req)
        }) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.answer(reply, |s| {
            // Only plain allocation (mode 0, or keeping the size): the space is always there.
            if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            let end = offset.saturating_add(length);
            if end > FILE_BYTES_MAX {
                return Err(Errno::EFBIG);
            }
            let len = s.file_mut(to_u64(ino))?.current.len() as u64;
            if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > len {
                s.change(to_u64(ino), Pending::SetLen(end))?;
            }
            Ok(())
        });
    }
}

/// A [`PowerLossFs`] mounted at a directory. Unmounted on drop.
pub struct Mount {
    fs: PowerLossFs,
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Mount {
    /// Mounts a filesystem holding `image` (all of it durable) at `mountpoint`, an existing
    /// empty directory. Errors: the mount's (no `/dev/fuse`, no permission).
    pub fn new(mountpoint: impl AsRef<Path>, image: &Image) -> io::Result<Self> {
        let fs = PowerLossFs { state: Arc::new(Mutex::new(State::from_image(image))) };
        let mut config = fuser::Config::default();
        config.mount_options.push(MountOption::FSName("mesh-powerloss".to_string()));
        let session = fuser::spawn_mount(fs.clone(), mountpoint.as_ref(), &config)?;
        Ok(Mount { fs, session: Some(session), path: mountpoint.as_ref().to_path_buf() })
    }

    /// The directory the filesystem is mounted at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cuts the power: from now on every call fails with `EIO`. Returns the image that survives:
    /// the durable tree and bytes plus the first `keep_unsynced` changes issued since their
    /// files' or directories' last syncs (writes, resizes, creates, unlinks, renames), in issue
    /// order across files and directories, as a disk that writes in order would keep them.
    pub fn cut(&self, keep_unsynced: usize) -> Image {
        let mut state = self.fs.lock();
        state.dead = true;
        state.image(Cut::Prefix(keep_unsynced))
    }

    /// Cuts the power, as [`Mount::cut`], but a disk that reorders: every [`SECTOR_BYTES`]
    /// sector of every unsynced write (and every resize) survives or not as `keep` says,
    /// independently, in issue order. Models a disk that wrote some later sectors and not some
    /// earlier ones, and writes torn at sector boundaries. Unsynced directory changes survive as
    /// a journal commits them: in order, up to the first one `keep` drops.
    pub fn cut_sectors(&self, mut keep: impl FnMut() -> bool) -> Image {
        let mut state = self.fs.lock();
        state.dead = true;
        state.image(Cut::Sectors(&mut keep))
    }

    /// Whether the power was cut: every call fails from then on.
    pub fn is_cut(&self) -> bool {
        self.fs.lock().dead
    }

    /// File and directory syncs completed so far.
    pub fn syncs(&self) -> u64 {
        self.fs.lock().syncs
    }

    /// Changes issued since their files' or directories' last syncs (a rename counts once).
    pub fn unsynced_writes(&self) -> usize {
        self.fs.lock().unsynced()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // The power goes first: a store or engine still running here (a test that
            // panicked) gets EIO and stops instead of keeping files open and busy.
            self.fs.lock().dead = true;
            if session.umount_and_join().is_err() {
                // Busy: a file is still open here (a test that panicked with a store open).
                // Detach it instead, so that no dead mount outlives the test; the session's
                // thread ends when the last file closes.
                if let Ok(path) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
                    // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
                    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
    }
}

/// Environment variable that makes [`skip_without_fuse`] fail instead of skipping: `.ci/run` sets
/// it, so CI never skips the crash tests that run over this filesystem.
pub const REQUIRE_ENV: &str = "MESH_REQUIRE_FUSE";

/// Whether a test of `test` must be skipped because this machine cannot mount FUSE filesystems
/// (no `/dev/fuse`, or neither root nor `fusermount3`): tries a mount of an empty image on a
/// temporary directory. Prints why when it skips. Panics instead when [`REQUIRE_ENV`] is set.
pub fn skip_without_fuse(test: &str) -> bool {
    // One probe per process, on its own directory: tests running in parallel threads would
    // otherwise mount on, and remove, one another's.
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = PROBE.get_or_init(|| {
        let attempt = std::env::temp_dir().join(format!("mesh-powerloss-probe-{}", std::process::id()));
        let result = std::fs::create_dir_all(&attempt)
            .and_then(|()| Mount::new(&attempt, &Image::default()).map(drop))
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_dir(&attempt);
        result
    });
    match result {
        Ok(()) => false,
        Err(e) if std::env::var_os(REQUIRE_ENV).is_some() => {
            panic!("{test}: cannot mount the power-loss filesystem ({e}) and {REQUIRE_ENV} is set")
        }
        Err(e) => {
            eprintln!(
                "{test}: SKIPPED, cannot mount the power-loss filesystem ({e}); it needs /dev/fuse and root or \
                 Debian's fuse3 (set {REQUIRE_ENV}=1 to fail instead)"
            );
            true
        }
    }
}
