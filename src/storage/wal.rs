//! WAL positions and segment files, named as Postgres names them, so that a rebuild can hand the
//! copies' segments straight to Postgres's own recovery.

use std::fmt;

/// Postgres's default (and pgtide's: it never changes `--wal-segsize`).
pub const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
/// A WAL page (`XLOG_BLCKSZ`, which Debian's build keeps at its default).
pub const WAL_PAGE: u64 = 8192;

/// A WAL position (log sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses Postgres's `X/Y` form.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return None;
        }
        Some(Lsn(hi << 32 | lo))
    }

    pub fn segment(self) -> u64 {
        self.0 / SEGMENT_SIZE
    }

    pub fn offset_in_segment(self) -> u64 {
        self.0 % SEGMENT_SIZE
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// The file name of a segment: timeline, then the segment number in two 32-bit halves of a
/// 4 GiB "log" unit, as `pg_wal/000000010000000000000003`.
pub fn segment_file_name(timeline: u32, segment: u64) -> String {
    let per_log = 0x1_0000_0000 / SEGMENT_SIZE;
    format!(
        "{:08X}{:08X}{:08X}",
        timeline,
        segment / per_log,
        segment % per_log
    )
}

/// The inverse of [`segment_file_name`].
pub fn parse_segment_file_name(name: &str) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((timeline, log * (0x1_0000_0000 / SEGMENT_SIZE) + seg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert_eq!(Lsn::parse("nonsense"), None);
    }

    #[test]
    fn segment_names_match_postgres() {
        assert_eq!(segment_file_name(1, 0), "000000010000000000000000");
        // 0/3000000 is segment 3; 1/0 is segment 256 (log 1, seg 0).
        assert_eq!(
            segment_file_name(1, Lsn(0x300_0000).segment()),
            "000000010000000000000003"
        );
        assert_eq!(
            segment_file_name(2, Lsn(0x1_0000_0000).segment()),
            "000000020000000100000000"
        );
        assert_eq!(
            parse_segment_file_name("000000020000000100000000"),
            Some((2, 256))
        );
        assert_eq!(
            parse_segment_file_name("000000010000000000000003.partial"),
            None
        );
    }
}
