//! A server's output, line by line, for the Logs RPC and for failure messages.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::docker::{ContainerEngine, LogStream, LogsWanted};
use crate::key::ServerKey;
use crate::runtime::Runtime;
use crate::runtime::error::Error;

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Stdout or stderr.
    pub stream: LogStream,
    /// The line without its newline.
    pub line: String,
}

impl<E: ContainerEngine> Runtime<E> {
    /// The output of `key`'s container, line by line.
    pub async fn logs(
        &self,
        key: &ServerKey,
        want: LogsWanted,
    ) -> Result<BoxStream<'static, Result<LogLine, Error>>, Error> {
        let c = self
            .container_of(key)
            .await?
            .ok_or_else(|| Error::NotFound { key: key.clone() })?;
        let chunks = self.inner.engine.logs(&c.id, want);
        Ok(chunks
            .flat_map(|chunk| {
                let lines: Vec<Result<LogLine, Error>> = match chunk {
                    Ok(c) => split_lines(c.stream, &c.data).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(Error::Engine(e))],
                };
                futures::stream::iter(lines)
            })
            .boxed())
    }

    /// The last `n` lines of output of container `id`, for failure messages; best effort.
    pub(in crate::runtime) async fn last_lines(&self, id: &str, n: u32) -> Vec<String> {
        let collect = self
            .inner
            .engine
            .logs(
                id,
                LogsWanted {
                    tail: Some(n),
                    ..LogsWanted::default()
                },
            )
            .filter_map(|c| async move { c.ok() })
            .flat_map(|c| futures::stream::iter(split_lines(c.stream, &c.data)))
            .map(|l| l.line)
            .collect::<Vec<_>>();
        tokio::time::timeout(Duration::from_secs(2), collect)
            .await
            .unwrap_or_default()
    }
}

/// Splits a chunk of output into lines, dropping the final newline.
fn split_lines(stream: LogStream, data: &[u8]) -> Vec<LogLine> {
    let text = String::from_utf8_lossy(data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    text.split('\n')
        .map(|l| LogLine {
            stream,
            line: l.strip_suffix('\r').unwrap_or(l).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_into_lines() {
        let lines = split_lines(LogStream::Stderr, b"a\r\nb\n");
        let text: Vec<_> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["a", "b"]);
        assert_eq!(split_lines(LogStream::Stdout, b"partial").len(), 1);
    }
}
