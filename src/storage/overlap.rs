//! The check that a compute's WAL is the copies' history where they meet.
//!
//! A stream normally starts at the copies' durable position, and everything below it is taken
//! to be the compute's own WAL. That holds for the compute that wrote the copies, but not for a
//! data directory of the same system that was copied aside, started outside pgtide and ran on:
//! it holds more WAL than the copies (so it is not "older"), with the same system identifier
//! and timeline, yet below the start its history differs from theirs. Streaming it from the
//! start would join two histories. So the receiver asks for a little WAL below the start (the
//! [`Overlap`]), compares it byte for byte with what the copies hold there, and fails closed on
//! a difference. Any divergence before the start shows in the overlap: a WAL page's records
//! carry their own positions, back links and checksums, so two histories do not write the same
//! bytes after they part.

use super::wal::Lsn;

/// The copies' WAL in `[from, from + expected.len())`, which ends at the stream's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub from: Lsn,
    pub expected: Vec<u8>,
}

impl Overlap {
    /// Where the overlap ends: the stream's own start.
    pub fn end(&self) -> Lsn {
        Lsn(self.from.0 + self.expected.len() as u64)
    }

    /// Compares streamed WAL (`data`, from `start`) with the overlap. Returns how many leading
    /// bytes of `data` lie below the overlap's end (compared, not to be written), or the
    /// position of the first byte that differs.
    pub fn compare(&self, start: Lsn, data: &[u8]) -> Result<usize, Lsn> {
        let end = self.end();
        if start >= end {
            return Ok(0);
        }
        if start < self.from {
            // Below what the copies hold here: the walsender sends from where it was asked.
            return Err(start);
        }
        let at = (start.0 - self.from.0) as usize;
        let below = ((end.0 - start.0) as usize).min(data.len());
        let expected = &self.expected[at..at + below];
        match expected
            .iter()
            .zip(&data[..below])
            .position(|(a, b)| a != b)
        {
            Some(i) => Err(Lsn(start.0 + i as u64)),
            None => Ok(below),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap() -> Overlap {
        Overlap {
            from: Lsn(1000),
            expected: (0..100u8).collect(),
        }
    }

    #[test]
    fn the_same_bytes_are_compared_and_skipped_across_messages() {
        let overlap = overlap();
        let all: Vec<u8> = (0..100u8).chain([7, 7, 7]).collect();
        assert_eq!(overlap.compare(Lsn(1000), &all[..30]), Ok(30));
        assert_eq!(overlap.compare(Lsn(1030), &all[30..]), Ok(70));
        assert_eq!(overlap.compare(Lsn(1100), &[1, 2, 3]), Ok(0));
        assert_eq!(overlap.end(), Lsn(1100));
    }

    #[test]
    fn a_different_byte_is_found_where_it_differs() {
        let overlap = overlap();
        let mut other: Vec<u8> = (0..100u8).collect();
        other[42] ^= 1;
        assert_eq!(overlap.compare(Lsn(1000), &other), Err(Lsn(1042)));
        assert_eq!(overlap.compare(Lsn(1040), &other[40..]), Err(Lsn(1042)));
        // WAL from below the overlap is not what was asked for.
        assert_eq!(overlap.compare(Lsn(999), &[0]), Err(Lsn(999)));
    }
}
