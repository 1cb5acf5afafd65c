// SPDX-License-Identifier: MPL-2.0

//! The fragment store on disk (`buffer-dir`): what kvssink has taken but the service has not yet persisted,
//! kept so that it survives a crash, a restart, a power loss and outages longer than RAM can hold.
//!
//! **Layout.** One file per fragment, `NNNNNNNNNNNNNNNNNNNN.kvsfrag` (a sequence number that increases with each
//! fragment, so the names sort in upload order), in a directory that one kvssink holds at a time
//! (`kvssink.lock`, an advisory `flock` with the holder's pid in it; within a process, a list of the held
//! directories too, see [`HELD_DIRS`]). A file is a magic string and a log of
//! records, each `u32 LE length | u8 kind | u32 LE CRC-32 of kind and payload | payload`:
//! - META (JSON: stream name, the fragment's absolute Timecode, TimecodeScale, media type),
//! - HEADER (the stream header the fragment belongs to: EBML header, Segment, Info, Tracks),
//! - DATA (the fragment's bytes as sent, frame by frame: `u64 LE` duration so far in ns, then the bytes; the
//!   first carries the Tags and Cluster head with the first frame),
//! - END (the fragmenter ended the fragment).
//!
//! The payloads of the DATA records, one after the other, are exactly the bytes PutMedia sends for the fragment.
//! A file is deleted when its fragment is PERSISTED (RECEIVED on a stream without retention), or dropped.
//!
//! **Held fragments.** A triggered upload's pre-roll ([`super::window`]) is written as `NNNN.kvshold`: media
//! kept in case a trigger asks for it, not to be uploaded otherwise. A trigger renames the files it takes to
//! `.kvsfrag` ([`FragmentFile::commit`]); the others are deleted as the pre-roll moves on. At start, `.kvshold`
//! files an earlier process left are deleted, not uploaded (no trigger asked for them), and counted.
//!
//! **Durability.** Each frame is written (one `writev(2)` of the record head and the frame's own memory, no
//! copy) before it is queued for the connection, so a process killed at any moment (SIGKILL, a crash, an OOM kill) loses nothing the store accepted: the kernel
//! has it. At the end of each fragment the file (and, for a new file, the directory) is `fdatasync`ed on the
//! runtime's blocking pool, off the streaming thread; a power loss can cost what was written since the last
//! completed sync (at most about one fragment). A torn last record (power loss, a write cut short) fails its
//! length or CRC check: the file is cut at the last whole record and the cut is reported.
//!
//! **Reading back.** Fragments found at start, and complete fragments that wait while the network is down,
//! hold no memory: each is mapped from its file (`memmap2`) when it is sent, and unmapped when it is done, so an
//! outage of hours costs disk, not memory (nor one mapping per fragment). At start every file is read once
//! and checked. The maps are safe to use because the files are only ever appended to by the holder of the
//! directory lock, which is this process.
//!
//! Written by hand: no maintained crate offers a crash-safe, append-only, per-item-deletable log whose payloads
//! can be sent as they are; the parts that exist (CRC-32, mmap) come from `crc32fast` and `memmap2`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use kvs_mkv::Rope;

const MAGIC: &[u8; 8] = b"KVSFRAG1";
const EXTENSION: &str = "kvsfrag";
const HELD_EXTENSION: &str = "kvshold";
const LOCK_FILE: &str = "kvssink.lock";
const RECORD_HEAD: usize = 9;
/// No record is larger (a fragment is at most 50 MB; a frame cannot be larger).
const MAX_RECORD: usize = 64 * 1024 * 1024;

const META: u8 = 1;
const HEADER: u8 = 2;
const DATA: u8 = 3;
const END: u8 = 4;

/// What goes wrong with the store. `Display` names the file or directory and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A file operation failed.
    Io {
        path: PathBuf,
        action: &'static str,
        error: String,
    },
    /// Another kvssink (this process or another) holds the directory.
    InUse { dir: PathBuf, holder: String },
    /// A stored fragment belongs to another stream.
    OtherStream {
        file: PathBuf,
        stream: String,
        expected: String,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io {
                path,
                action,
                error,
            } => {
                write!(f, "cannot {action} {}: {error}", path.display())
            }
            StoreError::InUse { dir, holder } => write!(
                f,
                "buffer-dir {} is in use by another kvssink ({holder}): each sink needs a directory of its own",
                dir.display()
            ),
            StoreError::OtherStream {
                file,
                stream,
                expected,
            } => write!(
                f,
                "{} holds a fragment of stream {stream:?}, not {expected:?}: buffer-dir belongs to another stream \
                 (upload it with stream-name={stream}, or move the directory away)",
                file.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |error| StoreError::Io {
        path: path.to_owned(),
        action,
        error: error.to_string(),
    }
}

/// What the store found at start that it did not upload as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A torn last record (the process or the machine stopped while writing): the file was cut there.
    TornTail { file: PathBuf, kept: u64, cut: u64 },
    /// Not a fragment file of ours, or damaged before its first frame: renamed `*.corrupt`, not uploaded.
    Corrupt {
        file: PathBuf,
        moved_to: PathBuf,
        reason: String,
    },
    /// A file that could not be read: left where it is, not uploaded.
    Unreadable { file: PathBuf, error: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::TornTail { file, kept, cut } => write!(
                f,
                "{}: a torn last record was cut ({cut} bytes after the last whole frame at byte {kept}); \
                 every whole frame before it is uploaded",
                file.display()
            ),
            Problem::Corrupt {
                file,
                moved_to,
                reason,
            } => write!(
                f,
                "{} is not a readable fragment ({reason}): moved to {}, not uploaded",
                file.display(),
                moved_to.display()
            ),
            Problem::Unreadable { file, error } => {
                write!(
                    f,
                    "{} cannot be read ({error}): left in place, not uploaded",
                    file.display()
                )
            }
        }
    }
}

#[derive(Debug)]
struct FileState {
    /// Changes once, when a held fragment is committed.
    path: Mutex<PathBuf>,
    /// Deleted (stored by the service, dropped, or given up after a failed write).
    released: AtomicBool,
    /// Where each frame's bytes are in the file (offset, length), as written or as found at start: a map of
    /// the file is sliced there without reading it, so its pages are read only when sent.
    pieces: Mutex<Vec<(usize, usize)>>,
}

/// A fragment's file. Clones share it; [`release`](Self::release) deletes it once.
#[derive(Debug, Clone)]
pub struct FragmentFile(Arc<FileState>);

impl FragmentFile {
    fn new(path: PathBuf, pieces: Vec<(usize, usize)>) -> Self {
        FragmentFile(Arc::new(FileState {
            path: Mutex::new(path),
            released: AtomicBool::new(false),
            pieces: Mutex::new(pieces),
        }))
    }

    fn add_piece(&self, offset: usize, length: usize) {
        self.0
            .pieces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((offset, length));
    }

    pub fn path(&self) -> PathBuf {
        self.0
            .path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The fragment is done with (persisted or dropped): its file goes.
    pub fn release(&self) {
        if !self.0.released.swap(true, Ordering::AcqRel) {
            let _ = fs::remove_file(self.path());
        }
    }

    /// A held fragment (`.kvshold`) is to be uploaded: renamed to `.kvsfrag`, so that a later start uploads it
    /// if the service has not got it by then.
    pub fn commit(&self) -> Result<(), StoreError> {
        let mut path = self.0.path.lock().unwrap_or_else(|e| e.into_inner());
        if path.extension().is_some_and(|e| e == HELD_EXTENSION) && !self.is_released() {
            let committed = path.with_extension(EXTENSION);
            fs::rename(&*path, &committed).map_err(io_error(&path, "rename"))?;
            *path = committed;
        }
        Ok(())
    }

    /// The fragment's size: its frames' bytes written so far.
    pub fn size(&self) -> usize {
        self.0
            .pieces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|&(_, length)| length)
            .sum()
    }

    pub fn is_released(&self) -> bool {
        self.0.released.load(Ordering::Acquire)
    }

    /// The fragment's bytes, as PutMedia sends them, from a memory map of its file (one piece per frame). Nothing
    /// is read here: the pages come in when the pieces are sent.
    pub fn map(&self) -> io::Result<Vec<Bytes>> {
        if self.is_released() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the fragment's file was released",
            ));
        }
        let map = map_file(&File::open(self.path())?)?;
        let pieces = self.0.pieces.lock().unwrap_or_else(|e| e.into_inner());
        pieces
            .iter()
            .map(|&(offset, length)| {
                map.get(offset..offset + length)
                    .map(|_| map.slice(offset..offset + length))
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the fragment's file is shorter",
                        )
                    })
            })
            .collect()
    }
}

fn map_file(file: &File) -> io::Result<Bytes> {
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the file is appended to only by this process while it holds the directory lock, and never
    // truncated while mapped (the torn-tail cut happens before the file is mapped for use).
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Bytes::from_owner(map))
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    stream: String,
    timecode: u64,
    timecode_scale: u64,
    #[serde(default)]
    media_type: Option<String>,
}

/// A fragment found in the store at start.
#[derive(Debug, Clone)]
pub struct RecoveredFragment {
    /// The stream header's bytes.
    pub header: Bytes,
    pub timecode_scale: u64,
    pub media_type: Option<String>,
    /// The cluster's absolute Timecode.
    pub timecode: u64,
    /// From its Timecode to the start of its latest frame.
    pub duration: Duration,
    /// Its size (its bytes stay on disk until it is sent: [`FragmentFile::map`]).
    pub size: usize,
    /// Frames in it (DATA records).
    pub frames: usize,
    /// It ended normally (false: the process stopped while it was written; it is uploaded as far as it got).
    pub complete: bool,
    pub file: FragmentFile,
}

/// What [`Store::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    pub fragments: Vec<RecoveredFragment>,
    pub problems: Vec<Problem>,
    /// Held fragments (an untriggered pre-roll) deleted.
    pub discarded: usize,
}

/// The records of a file, as far as they are whole: where the header and each frame's bytes are.
#[derive(Debug, Default)]
struct Parsed {
    meta: Option<Meta>,
    header: Option<(usize, usize)>,
    data: Vec<(usize, usize)>,
    duration: Duration,
    complete: bool,
    /// Bytes of whole records (magic included).
    valid: usize,
    /// Why parsing stopped before the end, if it did.
    stopped: Option<String>,
}

fn parse(file: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        parsed.stopped = Some("no kvssink fragment file magic".into());
        return parsed;
    }
    let mut at = MAGIC.len();
    parsed.valid = at;
    while at < file.len() {
        let Some(head) = file.get(at..at + RECORD_HEAD) else {
            parsed.stopped = Some("a record head cut short".into());
            break;
        };
        let length = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default()) as usize;
        let kind = head[4];
        let crc = u32::from_le_bytes(head[5..9].try_into().unwrap_or_default());
        let start = at + RECORD_HEAD;
        let Some(payload) = (length <= MAX_RECORD)
            .then(|| file.get(start..start + length))
            .flatten()
        else {
            parsed.stopped = Some(format!("a record of {length} bytes cut short"));
            break;
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(payload);
        if hasher.finalize() != crc {
            parsed.stopped = Some("a record whose checksum does not match".into());
            break;
        }
        match kind {
            META => match serde_json::from_slice(payload) {
                Ok(meta) => parsed.meta = Some(meta),
                Err(error) => {
                    parsed.stopped = Some(format!("unreadable metadata: {error}"));
                    break;
                }
            },
            HEADER => parsed.header = Some((start, length)),
            DATA if length >= 8 => {
                parsed.duration = Duration::from_nanos(u64::from_le_bytes(
                    payload[..8].try_into().unwrap_or_default(),
                ));
                parsed.data.push((start + 8, length - 8));
            }
            END => parsed.complete = true,
            other => {
                parsed.stopped = Some(format!("an unknown record kind {other}"));
                break;
            }
        }
        at = start + length;
        parsed.valid = at;
    }
    parsed
}

/// The head of a record whose payload is `parts`, one after the other: length, kind, CRC-32.
fn record_head(kind: u8, parts: &[&[u8]]) -> [u8; RECORD_HEAD] {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    for part in parts {
        hasher.update(part);
    }
    let mut head = [0; RECORD_HEAD];
    head[..4].copy_from_slice(&(length as u32).to_le_bytes());
    head[4] = kind;
    head[5..].copy_from_slice(&hasher.finalize().to_le_bytes());
    head
}

/// A small record (metadata, header, end), head and payload in one buffer.
fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = record_head(kind, &[payload]).to_vec();
    out.extend_from_slice(payload);
    out
}

/// Writes `before`, then a DATA record for a frame, in one `writev` and without copying the frame's bytes;
/// returns how many bytes went to the file.
fn write_data(
    file: &mut File,
    before: &[u8],
    data: &Rope,
    duration: Duration,
) -> io::Result<usize> {
    let duration = (duration.as_nanos() as u64).to_le_bytes();
    let pieces: Vec<Bytes> = data.clone().into_pieces().collect();
    let mut payload: Vec<&[u8]> = vec![&duration];
    payload.extend(pieces.iter().map(|p| p.as_ref()));
    let head = record_head(DATA, &payload);
    let mut slices: Vec<io::IoSlice> = [before, &head[..]]
        .into_iter()
        .chain(payload)
        .map(io::IoSlice::new)
        .collect();
    let total = slices.iter().map(|s| s.len()).sum();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => io::IoSlice::advance_slices(&mut rest, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(total)
}

struct Writer {
    file: File,
    handle: FragmentFile,
    timecode: u64,
    frames: usize,
    /// The file's length.
    length: usize,
}

/// Syncs run here: the streaming thread never waits for the disk. Tests wait on it with [`Store::sync`].
type Syncs = Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// See the module documentation. Used from the streaming thread only (fragment files are released from the
/// upload task through their [`FragmentFile`]).
pub struct Store {
    dir: PathBuf,
    stream: String,
    /// Holds the directory's `flock` while open.
    _lock: DirLock,
    next_sequence: u64,
    writing: Option<Writer>,
    syncs: Syncs,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("stream", &self.stream)
            .finish()
    }
}

fn sequence_of(path: &Path) -> Option<u64> {
    if path.extension()? != EXTENSION && path.extension()? != HELD_EXTENSION {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// The directories this process holds, by canonical path. `flock` alone cannot tell "another kvssink of this
/// process holds it" from "a child this process is forking still has a copy of the descriptor of a lock that
/// was just released" (the lock belongs to the open file, which a child shares until it calls `exec` and its
/// close-on-exec descriptors go): an application that spawns processes while it restarts a pipeline would see
/// the directory "in use" by itself.
static HELD_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// How long a lock that only a child being spawned can hold is waited for.
const FORK_HOLD_WAIT: Duration = Duration::from_secs(2);

/// The directory's lock: its `flock`ed file, and its place in [`HELD_DIRS`] until dropped.
struct DirLock {
    file: Option<File>,
    dir: PathBuf,
}

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock, StoreError> {
        let in_use = |holder: &str| {
            let holder = match holder.trim() {
                "" => "a process that has not written its pid yet".to_owned(),
                pid => format!("process {pid}"),
            };
            StoreError::InUse {
                dir: dir.to_owned(),
                holder,
            }
        };
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let ours = std::process::id().to_string();
        {
            // Reserved from here: the flock wait below must not hold the list (other sinks open meanwhile).
            let mut held = HELD_DIRS.lock().unwrap_or_else(|e| e.into_inner());
            if held.contains(&canonical) {
                return Err(StoreError::InUse {
                    dir: dir.to_owned(),
                    holder: format!("this process, {ours}"),
                });
            }
            held.push(canonical.clone());
        }
        // Dropped on every return below: an error frees the reservation.
        let mut lock = DirLock {
            file: None,
            dir: canonical,
        };
        let lock_path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_error(&lock_path, "open"))?;
        let since = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = fs::read_to_string(&lock_path).unwrap_or_default();
                    // Our own pid and no kvssink of ours holds it: a child being forked has the descriptor.
                    if holder.trim() == ours && since.elapsed() < FORK_HOLD_WAIT {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    return Err(in_use(&holder));
                }
                Err(fs::TryLockError::Error(error)) => {
                    return Err(StoreError::Io {
                        path: lock_path,
                        action: "lock",
                        error: error.to_string(),
                    });
                }
            }
        }
        file.set_len(0).map_err(io_error(&lock_path, "write"))?;
        write!(file, "{ours}").map_err(io_error(&lock_path, "write"))?;
        lock.file = Some(file);
        Ok(lock)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Out of the list first, the flock after (the file is dropped after this): a sink of this process
        // starting meanwhile finds the flock under our pid and waits for it, rather than being refused.
        let mut held = HELD_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|dir| *dir != self.dir);
    }
}

impl Store {
    /// Opens (creating it if needed) and locks `dir` for `stream`, and reads what an earlier process left:
    /// the fragments in upload order, torn tails cut, damaged files set aside. A fragment of another stream is
    /// an error (nothing of it is uploaded).
    pub fn open(dir: &Path, stream: &str) -> Result<(Store, Recovered), StoreError> {
        fs::create_dir_all(dir).map_err(io_error(dir, "create the directory"))?;
        let lock = DirLock::take(dir)?;

        let mut files: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .map_err(io_error(dir, "list"))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter_map(|path| sequence_of(&path).map(|sequence| (sequence, path)))
            .collect();
        files.sort();
        let next_sequence = files.last().map_or(0, |(sequence, _)| sequence + 1);
        let mut recovered = Recovered::default();
        for (_, path) in files {
            if path.extension().is_some_and(|e| e == HELD_EXTENSION) {
                fs::remove_file(&path).map_err(io_error(&path, "delete"))?;
                recovered.discarded += 1;
                continue;
            }
            if let Some(fragment) = recover(&path, stream, &mut recovered.problems)? {
                recovered.fragments.push(fragment);
            }
        }
        let store = Store {
            dir: dir.to_owned(),
            stream: stream.to_owned(),
            _lock: lock,
            next_sequence,
            writing: None,
            syncs: Syncs::default(),
        };
        Ok((store, recovered))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new fragment with its first frame (`data`: Tags, Cluster head, frame). The one being written, if any,
    /// is ended. Returns its file, for the queue to release when the fragment is done. `held`: a pre-roll
    /// fragment, uploaded only once [committed](FragmentFile::commit).
    pub fn start_fragment(
        &mut self,
        header: &super::fragmenter::StreamHeader,
        timecode: u64,
        data: &Rope,
        held: bool,
    ) -> Result<FragmentFile, StoreError> {
        self.end_fragment()?;
        let extension = if held { HELD_EXTENSION } else { EXTENSION };
        let path = self
            .dir
            .join(format!("{:020}.{extension}", self.next_sequence));
        self.next_sequence += 1;
        let meta = serde_json::to_vec(&Meta {
            stream: self.stream.clone(),
            timecode,
            timecode_scale: header.timecode_scale,
            media_type: header.media_type.clone(),
        })
        .unwrap_or_default();
        let mut head = MAGIC.to_vec();
        head.extend(record(META, &meta));
        head.extend(record(HEADER, &header.bytes));
        let first = (head.len() + RECORD_HEAD + 8, data.len());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(&path, "create"))?;
        let handle = FragmentFile::new(path.clone(), vec![first]);
        let length = match write_data(&mut file, &head, data, Duration::ZERO) {
            Ok(length) => length,
            Err(error) => {
                handle.release();
                return Err(io_error(&path, "write")(error));
            }
        };
        self.writing = Some(Writer {
            file,
            handle: handle.clone(),
            timecode,
            frames: 1,
            length,
        });
        Ok(handle)
    }

    /// The next frame of the fragment being written (`duration`: the fragment's length with it). Nothing when
    /// no fragment is being written (its start failed). A failed write gives the fragment up: its file goes
    /// (it lives on in memory only).
    pub fn append(&mut self, data: &Rope, duration: Duration) -> Result<(), StoreError> {
        let Some(writer) = self.writing.as_mut() else {
            return Ok(());
        };
        if writer.handle.is_released() {
            // Done with already (refused by the service while being written).
            self.writing = None;
            return Ok(());
        }
        let written = match write_data(&mut writer.file, &[], data, duration) {
            Ok(written) => written,
            Err(error) => {
                let writer = self.writing.take();
                let path = writer
                    .as_ref()
                    .map(|w| w.handle.path().to_owned())
                    .unwrap_or_default();
                if let Some(writer) = writer {
                    writer.handle.release();
                }
                return Err(io_error(&path, "write")(error));
            }
        };
        writer
            .handle
            .add_piece(writer.length + RECORD_HEAD + 8, data.len());
        writer.length += written;
        writer.frames += 1;
        Ok(())
    }

    /// The fragment being written (its Timecode) and how many of its frames are stored.
    pub fn position(&self) -> Option<(u64, usize)> {
        self.writing.as_ref().map(|w| (w.timecode, w.frames))
    }

    /// The fragment being written is complete: its END record, then a data sync off the streaming thread.
    pub fn end_fragment(&mut self) -> Result<(), StoreError> {
        let Some(mut writer) = self.writing.take() else {
            return Ok(());
        };
        if writer.handle.is_released() {
            return Ok(());
        }
        let path = writer.handle.path().to_owned();
        writer
            .file
            .write_all(&record(END, &[]))
            .map_err(io_error(&path, "write"))?;
        let dir = self.dir.clone();
        let sync = crate::runtime::RUNTIME.spawn_blocking(move || {
            let _ = writer.file.sync_data();
            if let Ok(dir) = File::open(&dir) {
                let _ = dir.sync_all();
            }
        });
        let mut syncs = self.syncs.lock().unwrap_or_else(|e| e.into_inner());
        syncs.retain(|s| !s.is_finished());
        syncs.push(sync);
        Ok(())
    }

    /// Waits for the syncs started so far (EOS and tests).
    pub fn sync(&self) {
        let syncs: Vec<_> = self
            .syncs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for sync in syncs {
            let _ = crate::runtime::RUNTIME.block_on(sync);
        }
    }
}

/// Reads one file left by an earlier process: its fragment (None: nothing to upload) or a problem. The file is
/// read (and checked) through a buffer; what is queued is a fresh map of it, whose pages are read again only
/// when they are sent, so a large backlog does not sit in the process's memory.
fn recover(
    path: &Path,
    stream: &str,
    problems: &mut Vec<Problem>,
) -> Result<Option<RecoveredFragment>, StoreError> {
    let unreadable = |error: io::Error| Problem::Unreadable {
        file: path.to_owned(),
        error: error.to_string(),
    };
    let (file, bytes) = match OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .and_then(|mut file| {
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut file, &mut bytes)?;
            Ok((file, bytes))
        }) {
        Ok(read) => read,
        Err(error) => {
            problems.push(unreadable(error));
            return Ok(None);
        }
    };
    let parsed = parse(&bytes);
    let (Some(meta), Some((header_at, header_length))) = (parsed.meta, parsed.header) else {
        let reason = parsed
            .stopped
            .unwrap_or_else(|| "no metadata or stream header".into());
        let moved_to = path.with_extension(format!("{EXTENSION}.corrupt"));
        if let Err(error) = fs::rename(path, &moved_to) {
            problems.push(unreadable(error));
        } else {
            problems.push(Problem::Corrupt {
                file: path.to_owned(),
                moved_to,
                reason,
            });
        }
        return Ok(None);
    };
    if meta.stream != stream {
        return Err(StoreError::OtherStream {
            file: path.to_owned(),
            stream: meta.stream,
            expected: stream.to_owned(),
        });
    }
    if parsed.stopped.is_some() {
        let (total, kept) = (bytes.len() as u64, parsed.valid as u64);
        file.set_len(kept)
            .map_err(io_error(path, "cut the torn tail of"))?;
        let _ = file.sync_all();
        problems.push(Problem::TornTail {
            file: path.to_owned(),
            kept,
            cut: total - kept,
        });
    }
    let handle = FragmentFile::new(path.to_owned(), parsed.data.clone());
    if parsed.data.is_empty() {
        // Its first frame never reached the disk: nothing to upload.
        handle.release();
        return Ok(None);
    }
    Ok(Some(RecoveredFragment {
        header: Bytes::copy_from_slice(&bytes[header_at..header_at + header_length]),
        timecode_scale: meta.timecode_scale,
        media_type: meta.media_type,
        timecode: meta.timecode,
        duration: parsed.duration,
        frames: parsed.data.len(),
        size: handle.size(),
        complete: parsed.complete,
        file: handle,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::fragmenter::StreamHeader;
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            generation: 1,
            bytes: Bytes::from_static(b"HEADER"),
            timecode_scale: 1_000_000,
            media_type: Some("video/h264".into()),
        }
    }

    fn rope(bytes: &'static [u8]) -> Rope {
        Rope::from(Bytes::from_static(bytes))
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvs-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn whole(fragment: &RecoveredFragment) -> Vec<u8> {
        fragment.file.map().unwrap().concat()
    }

    #[test]
    fn held_fragments_are_uploaded_only_once_committed_and_deleted_at_the_next_start() {
        let dir = dir("held");
        {
            let (mut store, _) = Store::open(&dir, "cam1").unwrap();
            let kept = store
                .start_fragment(&header(), 1000, &rope(b"A1"), true)
                .unwrap();
            store
                .append(&rope(b"A2"), Duration::from_millis(33))
                .unwrap();
            let committed = store
                .start_fragment(&header(), 2000, &rope(b"B1"), true)
                .unwrap();
            let discarded = store
                .start_fragment(&header(), 3000, &rope(b"C1"), true)
                .unwrap();
            store.end_fragment().unwrap();
            assert_eq!(kept.path().extension().unwrap(), HELD_EXTENSION);
            committed.commit().unwrap();
            assert_eq!(committed.path().extension().unwrap(), EXTENSION);
            assert!(!committed.path().with_extension(HELD_EXTENSION).exists());
            // A committed file is read from its new name.
            assert_eq!(committed.map().unwrap().concat(), b"B1");
            discarded.release();
            store.sync();
        }
        // The process stops: what was held and not committed goes, what was committed is uploaded.
        let (_, recovered) = Store::open(&dir, "cam1").unwrap();
        let timecodes: Vec<u64> = recovered.fragments.iter().map(|f| f.timecode).collect();
        assert_eq!((timecodes, recovered.discarded), (vec![2000], 1));
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "the lock and the committed fragment: {left:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fragments_come_back_in_order_with_their_bytes_and_released_ones_do_not() {
        let dir = dir("order");
        {
            let (mut store, recovered) = Store::open(&dir, "cam1").unwrap();
            assert!(recovered.fragments.is_empty() && recovered.problems.is_empty());
            let first = store
                .start_fragment(&header(), 1000, &rope(b"A1"), false)
                .unwrap();
            store
                .append(&rope(b"A2"), Duration::from_millis(33))
                .unwrap();
            store.end_fragment().unwrap();
            store
                .start_fragment(&header(), 2000, &rope(b"B1"), false)
                .unwrap();
            store
                .append(&rope(b"B2"), Duration::from_millis(33))
                .unwrap();
            store.end_fragment().unwrap();
            store
                .start_fragment(&header(), 3000, &rope(b"C1"), false)
                .unwrap();
            store
                .append(&rope(b"C2"), Duration::from_millis(33))
                .unwrap();
            store.sync();
            assert_eq!(first.map().unwrap().concat(), b"A1A2");
            first.release();
            assert!(!first.path().exists());
            // The process stops here, C mid-fragment.
        }
        let (_store, recovered) = Store::open(&dir, "cam1").unwrap();
        assert!(recovered.problems.is_empty(), "{:?}", recovered.problems);
        let found: Vec<_> = recovered
            .fragments
            .iter()
            .map(|f| (f.timecode, whole(f), f.frames, f.complete))
            .collect();
        assert_eq!(
            found,
            [
                (2000, b"B1B2".to_vec(), 2, true),
                (3000, b"C1C2".to_vec(), 2, false)
            ]
        );
        let b = &recovered.fragments[0];
        assert_eq!(
            (b.header.as_ref(), b.timecode_scale),
            (&b"HEADER"[..], 1_000_000)
        );
        assert_eq!(
            (b.duration, b.media_type.as_deref()),
            (Duration::from_millis(33), Some("video/h264"))
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_frame_at_every_byte() {
        let dir = dir("torn");
        let full = {
            let (mut store, _) = Store::open(&dir, "cam1").unwrap();
            let file = store
                .start_fragment(&header(), 1000, &rope(b"first"), false)
                .unwrap();
            store
                .append(&rope(b"second"), Duration::from_millis(33))
                .unwrap();
            store
                .append(&rope(b"third"), Duration::from_millis(66))
                .unwrap();
            fs::read(file.path()).unwrap()
        };
        let path = dir.join(format!("{:020}.{EXTENSION}", 0));
        let third_starts = full.len() - (RECORD_HEAD + 8 + 5);
        for cut in third_starts..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (_store, recovered) = Store::open(&dir, "cam1").unwrap();
            let fragment = &recovered.fragments[0];
            assert_eq!(whole(fragment), b"firstsecond", "cut at {cut}");
            if cut == third_starts {
                assert!(recovered.problems.is_empty());
            } else {
                assert_eq!(
                    recovered.problems,
                    [Problem::TornTail {
                        file: path.clone(),
                        kept: third_starts as u64,
                        cut: (cut - third_starts) as u64
                    }]
                );
            }
            assert_eq!(fs::metadata(&path).unwrap().len(), third_starts as u64);
        }
        // A flipped byte in the last frame: the same.
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        fs::write(&path, &flipped).unwrap();
        let (_store, recovered) = Store::open(&dir, "cam1").unwrap();
        assert_eq!(whole(&recovered.fragments[0]), b"firstsecond");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_a_forked_child_still_shares_is_waited_for_and_a_sink_of_this_process_is_not() {
        let (first, second) = (dir("forked"), dir("forked-other"));
        let (store, _) = Store::open(&first, "cam1").unwrap();
        // A child forked now shares the lock's open file until it exits (or execs): here until told to go.
        let mut go = [0; 2];
        // Close-on-exec: the processes other tests start meanwhile do not keep it.
        assert_eq!(unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only reads a pipe and exits, both async-signal-safe.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                let mut byte = 0u8;
                libc::read(go[0], (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(child > 0, "fork: {}", io::Error::last_os_error());
        // Another sink of this process while the first holds it: refused from the list, not after the flock
        // wait (which would end in "process {pid}", the store itself still holding the flock).
        let error = Store::open(&first, "cam1").unwrap_err();
        assert_eq!(
            error,
            StoreError::InUse {
                dir: first.clone(),
                holder: format!("this process, {}", std::process::id())
            }
        );
        // The sink stops; the child still holds the flock: the next start waits for it...
        drop(store);
        let waiting = {
            let first = first.clone();
            std::thread::spawn(move || Store::open(&first, "cam1").map(|_| ()))
        };
        let canonical = first.canonicalize().unwrap();
        while !HELD_DIRS.lock().unwrap().contains(&canonical) && !waiting.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // ...without keeping other sinks of the process from starting meanwhile...
        let (other, _) = Store::open(&second, "cam1").unwrap();
        // ...and opens once the child is gone (if the open above had waited for this one, it would have
        // given up after FORK_HOLD_WAIT, the child still holding the flock).
        assert_eq!(unsafe { libc::write(go[1], [1u8].as_ptr().cast(), 1) }, 1);
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        waiting.join().unwrap().unwrap();
        unsafe {
            libc::close(go[0]);
            libc::close(go[1]);
        }
        drop(other);
        fs::remove_dir_all(&first).unwrap();
        fs::remove_dir_all(&second).unwrap();
    }

    #[test]
    fn damaged_foreign_and_locked_directories_are_named() {
        let dir = dir("named");
        fs::create_dir_all(&dir).unwrap();
        let junk = dir.join(format!("{:020}.{EXTENSION}", 7));
        fs::write(&junk, b"not a fragment").unwrap();
        let (store, recovered) = Store::open(&dir, "cam1").unwrap();
        let moved_to = dir.join(format!("{:020}.{EXTENSION}.corrupt", 7));
        assert_eq!(
            recovered.problems,
            [Problem::Corrupt {
                file: junk.clone(),
                moved_to: moved_to.clone(),
                reason: "no kvssink fragment file magic".into()
            }]
        );
        assert!(moved_to.exists() && !junk.exists());
        assert_eq!(
            recovered.problems[0].to_string(),
            format!(
                "{} is not a readable fragment (no kvssink fragment file magic): moved to {}, not uploaded",
                junk.display(),
                moved_to.display()
            )
        );
        // A second sink of this process on the directory.
        let error = Store::open(&dir, "cam1").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "buffer-dir {} is in use by another kvssink (this process, {}): each sink needs a directory of \
                 its own",
                dir.display(),
                std::process::id()
            )
        );
        drop(store);
        // A sink of another process (pid 4242 written, util-linux flock(1) holding the lock).
        let lock = dir.join(LOCK_FILE);
        fs::write(&lock, "4242").unwrap();
        let mut holder = std::process::Command::new("flock")
            .args([lock.to_str().unwrap(), "-c", "echo locked; cat >/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(holder.stdout.as_mut().unwrap()),
            &mut said,
        )
        .unwrap();
        assert_eq!(said, "locked\n");
        assert_eq!(
            Store::open(&dir, "cam1").unwrap_err().to_string(),
            format!(
                "buffer-dir {} is in use by another kvssink (process 4242): each sink needs a directory of its own",
                dir.display()
            )
        );
        drop(holder.stdin.take());
        assert!(holder.wait().unwrap().success());
        // Another stream's fragments: an error, nothing uploaded.
        let (mut store, _) = Store::open(&dir, "cam1").unwrap();
        let file = store
            .start_fragment(&header(), 1000, &rope(b"x"), false)
            .unwrap();
        drop(store);
        let error = Store::open(&dir, "cam2").unwrap_err();
        assert_eq!(
            error,
            StoreError::OtherStream {
                file: file.path().to_owned(),
                stream: "cam1".into(),
                expected: "cam2".into()
            }
        );
        // Sequence numbers go on after what is there.
        let (mut store, recovered) = Store::open(&dir, "cam1").unwrap();
        assert_eq!(recovered.fragments.len(), 1);
        let next = store
            .start_fragment(&header(), 2000, &rope(b"y"), false)
            .unwrap();
        assert_eq!(sequence_of(&next.path()), Some(1));
        drop(store);
        // A file that cannot be read (here a directory with a fragment's name: the tests run as root, which
        // reads anything): named, left in place, the rest recovered.
        let unreadable = dir.join(format!("{:020}.{EXTENSION}", 5));
        fs::create_dir(&unreadable).unwrap();
        let (reopened, recovered) = Store::open(&dir, "cam1").unwrap();
        assert_eq!(recovered.fragments.len(), 2);
        match &recovered.problems[..] {
            [Problem::Unreadable { file, error }] => {
                assert_eq!(file, &unreadable);
                assert!(error.starts_with("Is a directory"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            recovered.problems[0]
                .to_string()
                .ends_with("): left in place, not uploaded"),
            "{}",
            recovered.problems[0]
        );
        drop(reopened);
        // A directory that cannot be made.
        let not_a_dir = moved_to.join("sub");
        let error = Store::open(&not_a_dir, "cam1").unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "cannot create the directory {}: ",
                not_a_dir.display()
            )),
            "{error}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
