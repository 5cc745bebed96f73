//! Snapshots of projected states: their encoding (a header, then the state as JSON, with a
//! checksum) and where they are kept (a table or a directory).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::rows::SnapshotRow;
use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::row::micros;
use crate::{Error, Result};

/// The format of the encoding below; another one is ignored like a corrupt snapshot.
const FORMAT: u32 = 1;

/// The identity of the stream event a state was last applied: a snapshot is used only if the
/// stream still has this event at its position (not a stream rolled back, reset or of
/// another database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    pub(crate) operation_uuid: String,
    pub(crate) appended_at: i64,
}

/// What precedes the state: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    projection: String,
    version: u32,
    position: u64,
    anchor: Option<Anchor>,
    length: u64,
    crc32: u32,
}

/// A decoded snapshot.
pub(crate) struct Decoded<S> {
    pub(crate) position: u64,
    pub(crate) anchor: Option<Anchor>,
    pub(crate) state: S,
}

/// Why a stored snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unusable {
    #[error("it is of version {found}, not {wanted}")]
    OtherVersion { found: u32, wanted: u32 },
    #[error("it is corrupt: {0}")]
    Corrupt(String),
}

/// Encodes `state` at `position` (run on a blocking thread: a large state takes a while).
pub(crate) fn encode<S: Serialize>(
    projection: &str,
    version: u32,
    position: u64,
    anchor: Option<Anchor>,
    state: &S,
) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(state)?;
    let header = Header {
        format: FORMAT,
        projection: projection.to_owned(),
        version,
        position,
        anchor,
        length: body.len() as u64,
        crc32: crc32fast::hash(&body),
    };
    let mut out = serde_json::to_vec(&header)?;
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a snapshot of `projection` at `version`.
pub(crate) fn decode<S: DeserializeOwned>(
    projection: &str,
    version: u32,
    bytes: &[u8],
) -> std::result::Result<Decoded<S>, Unusable> {
    let corrupt = |what: &str| Unusable::Corrupt(what.to_owned());
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no header"))?;
    let header: Header = serde_json::from_slice(&bytes[..split])
        .map_err(|error| Unusable::Corrupt(format!("bad header: {error}")))?;
    if header.format != FORMAT {
        return Err(Unusable::Corrupt(format!(
            "unknown format {}",
            header.format
        )));
    }
    if header.projection != projection {
        return Err(Unusable::Corrupt(format!(
            "it is a snapshot of `{}`",
            header.projection
        )));
    }
    if header.version != version {
        return Err(Unusable::OtherVersion {
            found: header.version,
            wanted: version,
        });
    }
    let body = &bytes[split + 1..];
    if body.len() as u64 != header.length {
        return Err(Unusable::Corrupt(format!(
            "{} bytes of state, {} expected",
            body.len(),
            header.length
        )));
    }
    if crc32fast::hash(body) != header.crc32 {
        return Err(corrupt("checksum mismatch"));
    }
    if header.position > 0 && header.anchor.is_none() {
        return Err(corrupt("no anchor event"));
    }
    let state = serde_json::from_slice(body)
        .map_err(|error| Unusable::Corrupt(format!("the state does not decode: {error}")))?;
    Ok(Decoded {
        position: header.position,
        anchor: header.anchor,
        state,
    })
}

/// A place snapshots are kept.
pub(crate) enum Store<B: Backend> {
    Table(DbHub<B>),
    Directory(PathBuf),
}

impl<B: Backend> Store<B> {
    /// The candidates for `projection`, newest first: each its bytes, or where they were.
    pub(crate) async fn load(&self, projection: &str, version: u32) -> Result<Vec<Candidate>> {
        match self {
            Self::Table(db) => {
                let mut connection = db.connection().await?;
                let rows = B::load_snapshots(&mut connection, projection).await?;
                // This version first, then the others (to say why they are ignored).
                let (mut mine, others): (Vec<_>, Vec<_>) = rows
                    .into_iter()
                    .partition(|row| row.version == i64::from(version));
                mine.extend(others);
                Ok(mine
                    .into_iter()
                    .map(|row| Candidate {
                        source: format!("table row ({}, version {})", row.projection, row.version),
                        bytes: row.body,
                    })
                    .collect())
            }
            Self::Directory(dir) => load_dir(dir, projection, version).await,
        }
    }

    /// Saves a snapshot at `position` over the stored one of this version (hosts saving at
    /// once may leave an older one of theirs: still a valid snapshot).
    pub(crate) async fn save(
        &self,
        projection: &str,
        version: u32,
        position: u64,
        bytes: Vec<u8>,
    ) -> Result<()> {
        match self {
            Self::Table(db) => {
                let mut connection = db.connection().await?;
                let row = SnapshotRow {
                    projection: projection.to_owned(),
                    version: i64::from(version),
                    position: to_i64(position),
                    saved_at: micros(std::time::SystemTime::now()),
                    body: bytes,
                };
                B::save_snapshot(&mut connection, &row).await
            }
            Self::Directory(dir) => save_dir(dir, projection, version, bytes).await,
        }
    }
}

/// A stored snapshot, not decoded yet.
pub(crate) struct Candidate {
    pub(crate) source: String,
    pub(crate) bytes: Vec<u8>,
}

fn file_name(projection: &str, version: u32) -> String {
    // The name is the program's own constant; keep it a plain file name whatever it holds.
    let safe: String = projection
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.v{version}.snapshot")
}

async fn load_dir(dir: &Path, projection: &str, version: u32) -> Result<Vec<Candidate>> {
    let mine = dir.join(file_name(projection, version));
    let mut out = Vec::new();
    match tokio::fs::read(&mine).await {
        Ok(bytes) => out.push(Candidate {
            source: mine.display().to_string(),
            bytes,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        // A cache that cannot be read is no cache: the state is projected from the stream.
        Err(error) => tracing::warn!(
            path = %mine.display(),
            %error,
            "the snapshot cannot be read; the state is rebuilt from the stream"
        ),
    }
    // Other versions' files, to say why they are ignored.
    if out.is_empty()
        && let Ok(mut entries) = tokio::fs::read_dir(dir).await
    {
        let prefix = file_name(projection, 0);
        let prefix = prefix.trim_end_matches("0.snapshot");
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix)
                && name.ends_with(".snapshot")
                && let Ok(bytes) = tokio::fs::read(entry.path()).await
            {
                out.push(Candidate {
                    source: entry.path().display().to_string(),
                    bytes,
                });
            }
        }
    }
    Ok(out)
}

async fn save_dir(dir: &Path, projection: &str, version: u32, bytes: Vec<u8>) -> Result<()> {
    let failed = |error: std::io::Error| Error::Snapshot(format!("{}: {error}", dir.display()));
    tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    let path = dir.join(file_name(projection, version));
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        file_name(projection, version),
        uuid::Uuid::new_v4().simple()
    ));
    tokio::fs::write(&temporary, &bytes).await.map_err(failed)?;
    if let Err(error) = tokio::fs::rename(&temporary, &path).await {
        let _ = tokio::fs::remove_file(&temporary).await;
        return Err(failed(error));
    }
    Ok(())
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let anchor = Anchor {
            operation_uuid: "u".to_owned(),
            appended_at: 7,
        };
        let bytes = encode("p", 3, 42, Some(anchor.clone()), &vec![1_u32, 2, 3]).expect("encode");
        let decoded: Decoded<Vec<u32>> = decode("p", 3, &bytes).expect("decode");
        assert_eq!(
            (decoded.position, decoded.anchor, decoded.state),
            (42, Some(anchor), vec![1, 2, 3])
        );
        let unanchored = encode("p", 3, 42, None, &vec![1_u32]).expect("encode");
        assert!(matches!(
            decode::<Vec<u32>>("p", 3, &unanchored),
            Err(Unusable::Corrupt(_))
        ));
        assert!(matches!(
            decode::<Vec<u32>>("p", 4, &bytes),
            Err(Unusable::OtherVersion {
                found: 3,
                wanted: 4
            })
        ));
        assert!(matches!(
            decode::<Vec<u32>>("q", 3, &bytes),
            Err(Unusable::Corrupt(_))
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        assert!(matches!(
            decode::<Vec<u32>>("p", 3, &flipped),
            Err(Unusable::Corrupt(_))
        ));
        assert!(matches!(
            decode::<Vec<u32>>("p", 3, &bytes[..bytes.len() - 1]),
            Err(Unusable::Corrupt(_))
        ));
        assert!(matches!(
            decode::<Vec<u32>>("p", 3, b"garbage"),
            Err(Unusable::Corrupt(_))
        ));
    }
}
