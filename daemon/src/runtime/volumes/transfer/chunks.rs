//! The byte stream of a tar archive as bounded chunks for the network, hashed on the way
//! out; and incoming chunks as one byte stream for the unpacker. Both sides block (they run
//! with the file work) on bounded channels.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::archive::ArchiveError;
use super::{CHUNK_BYTES, Checksum, ExportPart};
use crate::runtime::Error;

/// The tar stream cut into chunks for the network, hashed on the way.
pub(in crate::runtime) struct Chunker {
    tx: mpsc::Sender<Result<ExportPart, Error>>,
    buf: Vec<u8>,
    hash: Sha256,
    bytes: u64,
}

impl Chunker {
    /// Sends chunks of at most [`CHUNK_BYTES`] to `tx`.
    pub(in crate::runtime) fn new(tx: mpsc::Sender<Result<ExportPart, Error>>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(ExportPart::Data(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// Sends what is left; the checksum of everything written.
    pub(in crate::runtime) fn finish(&mut self) -> Result<Checksum, ArchiveError> {
        self.send().map_err(|source| ArchiveError::Io {
            path: String::new(),
            source,
        })?;
        Ok(Checksum {
            sha256: hex::encode(std::mem::take(&mut self.hash).finalize()),
            bytes: self.bytes,
        })
    }
}

impl Write for Chunker {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hash.update(&data[..n]);
        self.bytes += n as u64;
        if self.buf.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The chunks of an import as one byte stream for the unpacker.
pub(in crate::runtime) struct Unchunker {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl Unchunker {
    /// Reads the chunks `rx` brings, in order, until it closes.
    pub(in crate::runtime) fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Unchunker {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.buf = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn chunks_are_bounded_ordered_and_hashed_and_read_back_whole() {
        let (tx, mut rx) = mpsc::channel(64);
        let data: Vec<u8> = (0..(2 * CHUNK_BYTES + 10))
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let mut out = Chunker::new(tx);
        for piece in data.chunks(300_000) {
            out.write_all(piece).unwrap();
        }
        let sum = out.finish().unwrap();
        drop(out);
        assert_eq!(sum.bytes, data.len() as u64);
        assert_eq!(sum.sha256, hex::encode(Sha256::digest(&data)));
        let mut sizes = Vec::new();
        let (ctx, crx) = mpsc::channel(64);
        while let Ok(Ok(ExportPart::Data(d))) = rx.try_recv() {
            sizes.push(d.len());
            ctx.try_send(d).unwrap();
        }
        assert_eq!(sizes, vec![CHUNK_BYTES, CHUNK_BYTES, 10]);
        drop(ctx);
        let mut back = Vec::new();
        Unchunker::new(crx).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}
