//! The unfinished-import markers: `<state_dir>/imports/<name>`, holding the source node,
//! written (and synced) before the volume is made and removed once it is verified.

use std::io::{self, Write};
use std::path::Path;

use super::archive::ArchiveError;
use crate::runtime::Error;
use crate::runtime::error::blocking;

/// Writes the marker of volume `name` at `path`, durably.
pub(in crate::runtime) async fn write_marker(
    name: &str,
    path: &Path,
    source_node: &str,
) -> Result<(), Error> {
    let (path, text) = (path.to_owned(), source_node.to_owned());
    blocking("write import marker", move || {
        let io = |source| ArchiveError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut f = std::fs::File::create(&path).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    })
    .await?
    .map_err(|source| Error::Archive {
        name: name.to_owned(),
        source,
    })
}

/// Removes the marker of volume `name` at `path`; an absent one is fine.
pub(in crate::runtime) async fn remove_marker(name: &str, path: &Path) -> Result<(), Error> {
    let path = path.to_owned();
    blocking("remove import marker", move || {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
        .map_err(|source| ArchiveError::Io {
            path: path.display().to_string(),
            source,
        })
    })
    .await?
    .map_err(|source| Error::Archive {
        name: name.to_owned(),
        source,
    })
}
