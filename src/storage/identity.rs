//! Whose WAL a copy holds: the database system identifier and timeline of the compute that
//! streamed it, and the stream starts ("generations") the copy took part in.
//!
//! Each copy keeps this in `<copy>/<cluster>/identity`, written atomically (a temporary file,
//! fsync, rename, directory fsync). A copy whose system identifier is not the set's is refused:
//! pgtide never writes another cluster's WAL over segments of the same name.
//!
//! A stream that starts below what some copy may hold (bytes truncated from the members, or a
//! copy not a member then) is a fork of the WAL history: it is recorded as a new generation with
//! its start. A copy that missed a generation cannot trust what it holds beyond that start, so
//! its catch-up first truncates its WAL there ([`Identity::trusted_end`]).

use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::private::create_private;
use super::wal::{parse_segment_file_name, Lsn, SEGMENT_SIZE};

pub const IDENTITY_FILE: &str = "identity";
/// Stream starts kept in each identity file; a copy that missed more catches up from nothing.
const KEEP_HISTORY: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub system_identifier: u64,
    pub timeline: u32,
    /// The newest generation this copy took part in (0: none recorded yet).
    pub generation: u64,
    /// (generation, stream start), oldest first.
    pub history: Vec<(u64, Lsn)>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "database system {} (timeline {})",
            self.system_identifier, self.timeline
        )
    }
}

impl Identity {
    pub fn new(system_identifier: u64, timeline: u32) -> Identity {
        Identity {
            system_identifier,
            timeline,
            generation: 0,
            history: Vec::new(),
        }
    }

    /// A new generation: a stream that starts at `start`.
    pub fn fork(&mut self, start: Lsn) {
        self.generation += 1;
        self.history.push((self.generation, start));
        if self.history.len() > KEEP_HISTORY {
            self.history.remove(0);
        }
    }

    /// How much of a copy's WAL (ending at `end`, last a member in `generation`) is part of this
    /// identity's history: everything below the start of every generation it missed.
    pub fn trusted_end(&self, generation: u64, end: Lsn) -> Lsn {
        if generation >= self.generation {
            return end;
        }
        match self.history.first() {
            // Generations it missed are no longer listed: nothing it holds can be trusted.
            Some(&(oldest, _)) if generation + 1 < oldest => Lsn(0),
            None => Lsn(0),
            Some(_) => self
                .history
                .iter()
                .filter(|(g, _)| *g > generation)
                .map(|(_, start)| *start)
                .fold(end, Lsn::min),
        }
    }

    fn encode(&self) -> String {
        let mut text = format!(
            "system_identifier = {}\ntimeline = {}\ngeneration = {}\n",
            self.system_identifier, self.timeline, self.generation
        );
        for (generation, start) in &self.history {
            text.push_str(&format!("stream {generation} {start}\n"));
        }
        text
    }

    fn decode(text: &str) -> Option<Identity> {
        let mut system_identifier = None;
        let mut timeline = None;
        let mut generation = 0;
        let mut history = Vec::new();
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(" = ") {
                match key {
                    "system_identifier" => system_identifier = value.trim().parse().ok(),
                    "timeline" => timeline = value.trim().parse().ok(),
                    "generation" => generation = value.trim().parse().ok()?,
                    _ => {}
                }
            } else if let Some(rest) = line.strip_prefix("stream ") {
                let (g, start) = rest.split_once(' ')?;
                history.push((g.parse().ok()?, Lsn::parse(start)?));
            }
        }
        Some(Identity {
            system_identifier: system_identifier?,
            timeline: timeline?,
            generation,
            history,
        })
    }

    /// Reads a copy's identity file: `Ok(None)` when there is none, `Err` when it is unreadable
    /// or does not parse.
    pub fn read(copy: &Path) -> Result<Option<Identity>, String> {
        match fs::read_to_string(copy.join(IDENTITY_FILE)) {
            Ok(text) => Identity::decode(&text)
                .map(Some)
                .ok_or_else(|| format!("{} does not parse", copy.join(IDENTITY_FILE).display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "reading {}: {e}",
                copy.join(IDENTITY_FILE).display()
            )),
        }
    }

    /// Writes a copy's identity file atomically and durably.
    pub fn write(&self, copy: &Path) -> std::io::Result<()> {
        let tmp = copy.join("identity.tmp");
        let mut file = create_private(&tmp)?;
        file.write_all(self.encode().as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, copy.join(IDENTITY_FILE))?;
        File::open(copy)?.sync_all()
    }
}

/// The system identifier and timeline written in the WAL itself: the long header of the first
/// page of a segment holds both. For copies written before identity files existed.
pub fn infer_from_wal(wal_dir: &Path) -> Option<Identity> {
    let mut segments: Vec<_> = fs::read_dir(wal_dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            parse_segment_file_name(&name).map(|(tli, seg)| (seg, tli, e.path()))
        })
        .collect();
    segments.sort();
    segments.into_iter().rev().find_map(|(_, tli, path)| {
        let covers_header = super::segment::read_sums(&path)
            .iter()
            .any(|r| r.offset == 0 && r.len >= 40);
        if !covers_header {
            return None;
        }
        let mut header = [0u8; 40];
        File::open(&path).ok()?.read_exact_at(&mut header, 0).ok()?;
        long_page_header(&header)
            .filter(|(_, header_tli)| *header_tli == tli)
            .map(|(system_identifier, timeline)| Identity::new(system_identifier, timeline))
    })
}

/// (system identifier, timeline) from the long header that starts every WAL segment.
pub fn long_page_header(page: &[u8]) -> Option<(u64, u32)> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    if page.len() < 40 {
        return None;
    }
    let info = u16::from_le_bytes(page[2..4].try_into().ok()?);
    let timeline = u32::from_le_bytes(page[4..8].try_into().ok()?);
    let system_identifier = u64::from_le_bytes(page[24..32].try_into().ok()?);
    let segment_size = u32::from_le_bytes(page[32..36].try_into().ok()?);
    (info & XLP_LONG_HEADER != 0 && segment_size as u64 == SEGMENT_SIZE)
        .then_some((system_identifier, timeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap(), None);
        let mut identity = Identity::new(7_301_234_567_890_123_456, 1);
        identity.fork(Lsn(0x300_0000));
        identity.fork(Lsn(0x500_0028));
        identity.write(dir.path()).unwrap();
        assert!(!dir.path().join("identity.tmp").exists());
        assert_eq!(Identity::read(dir.path()).unwrap(), Some(identity));
        fs::write(dir.path().join(IDENTITY_FILE), "garbage").unwrap();
        assert!(Identity::read(dir.path()).is_err());
    }

    #[test]
    fn a_copy_that_missed_a_generation_trusts_nothing_beyond_its_start() {
        let mut identity = Identity::new(1, 1);
        identity.fork(Lsn(1000)); // generation 1
        identity.fork(Lsn(5000)); // generation 2
        identity.fork(Lsn(9000)); // generation 3
        assert_eq!(identity.trusted_end(3, Lsn(12_000)), Lsn(12_000));
        assert_eq!(identity.trusted_end(2, Lsn(12_000)), Lsn(9000));
        assert_eq!(identity.trusted_end(1, Lsn(12_000)), Lsn(5000));
        assert_eq!(identity.trusted_end(1, Lsn(3000)), Lsn(3000));
        for start in 0..KEEP_HISTORY as u64 {
            identity.fork(Lsn(10_000 + start));
        }
        // Generation 1's successors are gone from the history: nothing is trusted.
        assert_eq!(identity.trusted_end(1, Lsn(12_000)), Lsn(0));
    }

    #[test]
    fn the_long_page_header_names_the_system() {
        let mut page = [0u8; 40];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[24..32].copy_from_slice(&42u64.to_le_bytes());
        page[32..36].copy_from_slice(&(SEGMENT_SIZE as u32).to_le_bytes());
        assert_eq!(long_page_header(&page), Some((42, 1)));
        page[2] = 0;
        assert_eq!(long_page_header(&page), None);
    }
}
