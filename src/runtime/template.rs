//! The warm pool's data directories, copied from one golden `initdb` output instead of one
//! `initdb` each, then given an identity of their own.
//!
//! An `initdb` costs 0.5–0.7 s of CPU; back-to-back creations of clusters outran the pool's
//! refill on two cores and fell back to `initdb` in line. A copy of the golden directory
//! (~40 MiB) costs a fraction of that. But every copy would then carry the golden one's
//! *system identifier*, which the copies use to refuse another cluster's WAL, and its *mock
//! authentication nonce*, from which Postgres derives the fake SCRAM salts of unknown users.
//! So each copy gets new ones, as `initdb` would have drawn: in `global/pg_control` (the
//! control file's CRC-32C recomputed) and in the long header of each WAL segment's first page.
//! No tool does this (`pg_resetwal` cannot set the identifier), so it is written here, and
//! checked: the CRC's place is found, not assumed, each WAL header must hold the old
//! identifier before it is changed, and `pg_controldata` must read back exactly what was
//! written; anything unexpected fails the copy, and the pool runs `initdb` instead.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context};

/// The bytes of `global/pg_control` that Postgres reads (the file is padded to 8 KiB).
const CONTROL_FILE: &str = "global/pg_control";
/// `MOCK_AUTH_NONCE_LEN`: the nonce is the control file's last field before its CRC.
const NONCE_LEN: usize = 32;
/// In a WAL segment's first page: `XLogLongPageHeaderData.xlp_sysid`.
const WAL_SYSID_OFFSET: u64 = 24;
/// `XLP_LONG_HEADER` in `xlp_info`.
const XLP_LONG_HEADER: u16 = 0x0002;

/// Copies the directory tree `from` to `to` (which must not exist), keeping modes.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir(to)?;
    fs::set_permissions(to, fs::metadata(from)?.permissions())?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        }
    }
    Ok(())
}

/// The identity a copy was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub system_identifier: u64,
    pub nonce: [u8; NONCE_LEN],
}

/// Gives the data directory `pgdata` (a copy of an `initdb` output, not running) a new system
/// identifier and mock authentication nonce; `pg_controldata` checks the result.
pub fn give_identity(pgdata: &Path, pg_controldata: &Path) -> anyhow::Result<Identity> {
    let control_path = pgdata.join(CONTROL_FILE);
    let mut control = fs::read(&control_path).context("reading pg_control")?;
    let crc_at = crc_offset(&control).context("finding pg_control's CRC")?;
    if crc_at < 8 + NONCE_LEN {
        bail!("pg_control's CRC is at {crc_at}: too early for this layout");
    }
    let old = u64::from_le_bytes(control[..8].try_into().expect("8 bytes"));
    let identity = fresh_identity(old);
    control[..8].copy_from_slice(&identity.system_identifier.to_le_bytes());
    control[crc_at - NONCE_LEN..crc_at].copy_from_slice(&identity.nonce);
    let crc = crc32c::crc32c(&control[..crc_at]);
    control[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());

    for entry in fs::read_dir(pgdata.join("pg_wal"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            rewrite_wal_sysid(&entry.path(), old, identity.system_identifier)
                .with_context(|| format!("the WAL segment {name}"))?;
        }
    }
    let mut file = fs::OpenOptions::new().write(true).open(&control_path)?;
    file.write_all(&control)?;
    file.sync_all()?;

    let read_back = controldata(pgdata, pg_controldata)?;
    if read_back != identity {
        bail!("pg_controldata reads {read_back:?} back, not what was written ({identity:?})");
    }
    Ok(identity)
}

/// Where the control file's CRC-32C lies: the first 4-byte-aligned offset whose bytes hold the
/// CRC of everything before it.
fn crc_offset(control: &[u8]) -> Option<usize> {
    (8..control.len().min(4096) - 4).step_by(4).find(|&at| {
        let stored = u32::from_le_bytes(control[at..at + 4].try_into().expect("4 bytes"));
        crc32c::crc32c(&control[..at]) == stored
    })
}

/// A system identifier drawn as `initdb` draws one (seconds in the high half), with random low
/// bits instead of the microseconds and pid; and a random nonce.
fn fresh_identity(old: u64) -> Identity {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut system_identifier = old;
    while system_identifier == old {
        system_identifier = (seconds << 32) | u64::from(rand::random::<u32>());
    }
    Identity {
        system_identifier,
        nonce: rand::random(),
    }
}

/// Changes the system identifier in a WAL segment's long page header, which must hold `old`.
fn rewrite_wal_sysid(path: &Path, old: u64, new: u64) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = [0u8; 32];
    file.read_exact(&mut header)?;
    let info = u16::from_le_bytes([header[2], header[3]]);
    let sysid = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
    if info & XLP_LONG_HEADER == 0 || sysid != old {
        bail!("its first page has no long header naming the golden system identifier");
    }
    file.seek(SeekFrom::Start(WAL_SYSID_OFFSET))?;
    file.write_all(&new.to_le_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// The identifier and nonce `pg_controldata` reads from `pgdata`.
fn controldata(pgdata: &Path, pg_controldata: &Path) -> anyhow::Result<Identity> {
    let output = std::process::Command::new(pg_controldata)
        .arg(pgdata)
        .env("LC_ALL", "C")
        .output()
        .context("running pg_controldata")?;
    if !output.status.success() {
        bail!(
            "pg_controldata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim_start_matches(':').trim().to_string())
    };
    let system_identifier = field("Database system identifier")
        .and_then(|v| v.parse().ok())
        .context("pg_controldata shows no system identifier")?;
    let nonce_hex = field("Mock authentication nonce").context("pg_controldata shows no nonce")?;
    let mut nonce = [0u8; NONCE_LEN];
    if nonce_hex.len() != NONCE_LEN * 2 {
        bail!("pg_controldata's nonce {nonce_hex} is not {NONCE_LEN} bytes");
    }
    for (i, byte) in nonce.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&nonce_hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(Identity {
        system_identifier,
        nonce,
    })
}
