//! [`DocFile`]: one small document (a consumer's state) rewritten in place, atomically and
//! checksummed: two slot files written in turn, each stamped with a generation and a CRC-32C.
//!
//! A write replaces the older slot with a single positioned write (and, when asked, one
//! fdatasync): no temporary file, rename or directory sync per update. A torn or bit-rotted slot
//! fails its check on open and the other, previous generation is used instead.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"NRC1";
/// magic, generation (u64 LE), body length (u32 LE), CRC-32C of generation, length and body.
const HEADER: usize = 4 + 8 + 4 + 4;

pub struct DocFile {
    slots: [File; 2],
    /// Generation of the newest valid slot (0: none written yet).
    generation: u64,
    /// The slot the next write replaces (the one not holding the newest generation).
    next: usize,
    buf: Vec<u8>,
    /// A slot that must have held a document fails its check (see [`DocFile::suspect`]).
    suspect: bool,
}

impl DocFile {
    /// Opens (creating if needed) `<dir>/<name>.0` and `.1`; returns the file and the newest
    /// intact document, if any.
    pub fn open(dir: &Path, name: &str) -> io::Result<(DocFile, Option<Vec<u8>>)> {
        let paths: [PathBuf; 2] = [dir.join(format!("{name}.0")), dir.join(format!("{name}.1"))];
        let created = !paths[0].exists() || !paths[1].exists();
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
        };
        let slots = [open(&paths[0])?, open(&paths[1])?];
        if created {
            File::open(dir)?.sync_all()?;
        }
        let mut best: Option<(u64, usize, Vec<u8>)> = None;
        // Per slot: empty (never written), or written but failing its check now.
        let mut state = [SlotState::Intact; 2];
        for ((i, f), st) in slots.iter().enumerate().zip(state.iter_mut()) {
            match read_slot(f)? {
                Some((generation, body)) => {
                    if best.as_ref().is_none_or(|(g, _, _)| generation > *g) {
                        best = Some((generation, i, body));
                    }
                }
                None if f.metadata()?.len() == 0 => *st = SlotState::Empty,
                None => *st = SlotState::Bad,
            }
        }
        // Past the first write both slots hold a document: beside a newest of generation 2 or
        // more an empty slot was cut, and a bad slot may always have been the newest.
        let suspect = match &best {
            Some((g, i, _)) => match state.get(1 - i) {
                Some(SlotState::Bad) => true,
                Some(SlotState::Empty) => *g >= 2,
                _ => false,
            },
            None => state.contains(&SlotState::Bad),
        };
        let (generation, next, body) = match best {
            Some((g, i, body)) => (g, 1 - i, Some(body)),
            None => (0, 0, None),
        };
        Ok((
            DocFile {
                slots,
                generation,
                next,
                buf: Vec::new(),
                suspect,
            },
            body,
        ))
    }

    /// Whether, at open, a slot that must have held a document failed its check (bit rot, a
    /// cut file, or a write torn by a crash): the document returned may then be older than the
    /// last one written. Callers for whom an older document is unsafe (a Raft vote) treat this
    /// as damage.
    pub fn suspect(&self) -> bool {
        self.suspect
    }

    /// The generation of the newest document (0: none written yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Replaces the document. With `sync` it is durable when this returns; without, it survives
    /// the process being killed but not the machine losing power.
    pub fn write(&mut self, body: &[u8], sync: bool) -> io::Result<()> {
        let len = u32::try_from(body.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let generation = self.generation + 1;
        self.buf.clear();
        self.buf.extend_from_slice(MAGIC);
        self.buf.extend_from_slice(&generation.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        let crc = checksum(generation, len, body);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(body);
        let [first, second] = &self.slots;
        let f = if self.next == 0 { first } else { second };
        f.write_all_at(&self.buf, 0)?;
        if sync {
            f.sync_data()?;
        }
        self.generation = generation;
        self.next = 1 - self.next;
        Ok(())
    }
}

/// What opening found in a slot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Intact,
    Empty,
    Bad,
}

/// CRC-32C over the generation, the length and the body.
fn checksum(generation: u64, len: u32, body: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    let (g, l) = head.split_at_mut(8);
    g.copy_from_slice(&generation.to_le_bytes());
    l.copy_from_slice(&len.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), body)
}

/// The generation and body of an intact slot; `None` for an empty, torn or damaged one.
pub(crate) fn read_slot(f: &File) -> io::Result<Option<(u64, Vec<u8>)>> {
    let size = f.metadata()?.len() as usize;
    if size < HEADER {
        return Ok(None);
    }
    let mut data = vec![0; size];
    f.read_exact_at(&mut data, 0)?;
    let (head, rest) = data.split_at(HEADER);
    let (magic, head) = head.split_at(4);
    let (generation, head) = head.split_at(8);
    let (len, crc) = head.split_at(4);
    let num = |b: &[u8]| b.iter().rev().fold(0u64, |acc, x| acc << 8 | u64::from(*x));
    let (generation, len, crc) = (num(generation), num(len) as u32, num(crc) as u32);
    if magic != MAGIC {
        return Ok(None);
    }
    let Some(body) = rest.get(..len as usize) else {
        return Ok(None);
    };
    if checksum(generation, len, body) != crc {
        return Ok(None);
    }
    Ok(Some((generation, body.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_intact_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, body) = DocFile::open(dir.path(), "state").unwrap();
        assert_eq!(body, None);
        f.write(b"first", true).unwrap();
        f.write(b"second, longer", true).unwrap();
        f.write(b"third", false).unwrap();
        drop(f);
        let (mut f, body) = DocFile::open(dir.path(), "state").unwrap();
        assert_eq!(body.as_deref(), Some(&b"third"[..]));
        f.write(b"fourth", true).unwrap();
        drop(f);
        let (_, body) = DocFile::open(dir.path(), "state").unwrap();
        assert_eq!(body.as_deref(), Some(&b"fourth"[..]));
    }

    #[test]
    fn a_damaged_slot_falls_back_to_the_previous_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, _) = DocFile::open(dir.path(), "state").unwrap();
        f.write(b"older", true).unwrap(); // slot 0
        f.write(b"newer", true).unwrap(); // slot 1
        drop(f);
        // Flip one body bit of the newer slot.
        let p = dir.path().join("state.1");
        let mut data = std::fs::read(&p).unwrap();
        data[HEADER + 1] ^= 0x04;
        std::fs::write(&p, &data).unwrap();
        let (mut f, body) = DocFile::open(dir.path(), "state").unwrap();
        assert_eq!(body.as_deref(), Some(&b"older"[..]));
        assert!(f.suspect(), "the lost slot may have held a newer document");
        // The damaged slot is the one rewritten next.
        f.write(b"repaired", true).unwrap();
        drop(f);
        let (f, body) = DocFile::open(dir.path(), "state").unwrap();
        assert_eq!(body.as_deref(), Some(&b"repaired"[..]));
        assert!(!f.suspect());
        // A torn write (cut inside the body) is not intact either.
        let p0 = dir.path().join("state.0");
        let p1 = dir.path().join("state.1");
        let newest = if std::fs::read(&p1).unwrap().ends_with(b"repaired") {
            p1
        } else {
            p0
        };
        let data = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &data[..data.len() - 3]).unwrap();
        let (f, body) = DocFile::open(dir.path(), "state").unwrap();
        assert_eq!(body.as_deref(), Some(&b"older"[..]));
        assert!(f.suspect());
    }

    #[test]
    fn a_slot_cut_to_nothing_past_the_first_write_is_suspect() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, _) = DocFile::open(dir.path(), "state").unwrap();
        assert!(!f.suspect(), "new");
        f.write(b"one", true).unwrap(); // slot 0, generation 1
        drop(f);
        let (mut f, _) = DocFile::open(dir.path(), "state").unwrap();
        assert!(!f.suspect(), "slot 1 was never written");
        f.write(b"two", true).unwrap(); // slot 1, generation 2
        drop(f);
        // The newest cut to nothing: the older one is all that is left.
        std::fs::File::create(dir.path().join("state.1")).unwrap();
        let (f, body) = DocFile::open(dir.path(), "state").unwrap();
        assert_eq!(body.as_deref(), Some(&b"one"[..]));
        assert!(!f.suspect(), "generation 1 beside an empty slot looks new");
        drop(f);
        // The older cut instead: the newest (generation 2) had a predecessor.
        let (mut f, _) = DocFile::open(dir.path(), "state").unwrap();
        f.write(b"two", true).unwrap(); // slot 1 again, generation 2
        drop(f);
        std::fs::File::create(dir.path().join("state.0")).unwrap();
        let (f, body) = DocFile::open(dir.path(), "state").unwrap();
        assert_eq!(body.as_deref(), Some(&b"two"[..]));
        assert!(f.suspect());
    }
}
